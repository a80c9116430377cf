from typing import Literal

from pydantic import Field, model_validator

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
    min_objects: int = Field(1, ge=1)  # objects per scene, drawn uniformly between the two
    max_objects: int = 3
    shapes: list[str] = ["circle", "square", "triangle", "diamond"]
    colours: list[str] = ["red", "green", "blue", "yellow", "purple", "white"]
    sizes: list[str] = ["small", "large"]
    relations: list[str] = ["left of", "right of", "above", "below"]
    held_out_fraction: float = 0.2  # share of (colour, shape) combinations never seen in training
    captions_per_image: int = 2
    shard_size: int = 500

    @model_validator(mode="after")
    def _objects_range(self):
        if self.min_objects > self.max_objects:
            raise ValueError(f"world.min_objects ({self.min_objects}) is above world.max_objects ({self.max_objects})")
        return self


class DataConfig(Section):
    """Where pairs come from, how they are validated, and how `maple data import` splits them."""

    format: Literal["synthetic", "parquet", "webdataset", "coco", "imagefolder"] = "synthetic"
    # a folder or glob of shards; coco: the captions JSON; imagefolder: the captions file (.csv, .tsv, .jsonl) or
    # the image folder holding metadata.csv / metadata.jsonl (maple.data.imagefolder)
    path: str | None = None
    image_root: str | None = None  # coco, imagefolder: the folder the file names are relative to; None: the file's
    max_image_pixels: int = 64_000_000
    min_image_side: int = 8
    max_aspect_ratio: float = 20.0
    max_caption_chars: int = 2000
    # `maple data import` (jobs/import_data.py): the good pairs as Parquet splits under <run.output_dir>/world
    split: Literal["auto", "train", "val", "test"] = "auto"  # auto: each pair's split from a hash of its id
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # auto only
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # auto only
    shard_rows: int = Field(1000, ge=1)  # pairs per Parquet shard: mining's unit of work and of resume

    @model_validator(mode="after")
    def _fractions_leave_a_train_split(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction ({self.val_fraction}) + data.test_fraction ({self.test_fraction}) "
                             "must leave pairs for training (sum below 1)")
        return self
