from typing import Literal

from maple.section import Section


class WorldConfig(Section):
    """The synthetic world (`maple.data.synth`): sizes, vocabulary, splits."""

    seed: int = 0
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 300
    n_compositional: int = 300  # the compositional test (reported once)
    n_compositional_val: int = 300  # its validation twin (other scenes, same rules): what defaults are tuned on
    image_size: int = 64
    max_objects: int = 3
    shapes: list[str] = ["circle", "square", "triangle", "diamond"]
    colours: list[str] = ["red", "green", "blue", "yellow", "purple", "white"]
    sizes: list[str] = ["small", "large"]
    relations: list[str] = ["left of", "right of", "above", "below"]
    held_out_fraction: float = 0.2  # share of (colour, shape) combinations never seen in training
    captions_per_image: int = 2
    shard_size: int = 500


class DataConfig(Section):
    """Where pairs come from and how they are validated."""

    format: Literal["synthetic", "parquet", "webdataset", "coco"] = "synthetic"
    path: str | None = None  # a folder or glob of shards; for coco the captions JSON
    image_root: str | None = None  # coco: the folder the JSON's file names are relative to
    max_image_pixels: int = 64_000_000
    min_image_side: int = 8
    max_aspect_ratio: float = 20.0
    max_caption_chars: int = 2000
