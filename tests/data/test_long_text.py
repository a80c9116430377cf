"""Long texts of the synthetic world (maple.data.long_text): complete, longer than CLIP's window, deterministic."""

import random
import re

import pyarrow.parquet as pq
import pytest

from maple.data.config import WorldConfig
from maple.data.long_text import (
    BACKGROUND,
    LONG_TEXT_SCHEMA,
    TOPICS,
    count_tokens,
    document,
    long_caption,
    long_text_rows,
    position,
    write_long_texts,
)
from maple.data.synth import Obj, Scene, relation_holds, sample_scene
from maple.models.tokenizer import build_word_tokenizer

WORLD = WorldConfig()


def scenes(n: int = 40) -> list[Scene]:
    rng = random.Random(3)
    return [sample_scene(rng, WORLD, set()) for _ in range(n)]


def test_long_caption_names_every_object_with_attributes_and_cell():
    for scene in scenes():
        text = long_caption(scene, random.Random(0))
        for o in scene.objects:
            assert f"There is a {o.size} {o.colour} {o.shape} in the {position(o)}." in text


def test_long_caption_states_every_relation_that_holds_and_none_that_does_not():
    for scene in scenes():
        text = long_caption(scene, random.Random(0))
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                for rel in WORLD.relations:
                    sentence = f"The {a.size} {a.colour} {a.shape} is {rel} the {b.size} {b.colour} {b.shape}."
                    assert (sentence in text) == relation_holds(a, rel, b)


def test_long_texts_exceed_the_clip_window_of_77_tokens_of_the_word_tokenizer():
    tokenizer = build_word_tokenizer(max_length=10_000)
    for scene in scenes():
        for text in (long_caption(scene, random.Random(1)), document(scene, random.Random(1))):
            n = len(tokenizer(text)["input_ids"])
            assert n > 77
            assert n == count_tokens(text) + 1  # + [EOS]


def test_one_object_scene_is_padded_with_background_sentences_to_min_tokens():
    scene = Scene((Obj("circle", "red", "small", 0, 0),))
    text = long_caption(scene, random.Random(0), min_tokens=300)
    assert count_tokens(text) >= 300
    assert text.count("circle") == 1


def test_distractor_sentences_use_no_word_of_the_world_vocabulary():
    vocab = {w for item in [*WORLD.shapes, *WORLD.colours, *WORLD.sizes, *WORLD.relations] for w in item.split()}
    vocab -= {"of"}  # the preposition of "left of" tells nothing on its own
    sentences = [*BACKGROUND, *(s for topic in TOPICS.values() for s in topic)]
    for sentence in sentences:
        assert not vocab & set(re.findall(r"\w+", sentence.lower())), sentence


def test_document_holds_the_scene_paragraph_among_unrelated_paragraphs():
    for scene in scenes():
        doc = document(scene, random.Random(5))
        paragraphs = doc.split("\n\n")
        with_scene = [p for p in paragraphs if "figure attached" in p]
        assert len(with_scene) == 1 and len(paragraphs) >= 3
        for o in scene.objects:
            assert f"{o.size} {o.colour} {o.shape}" in with_scene[0]


def test_rows_are_deterministic_by_seed_and_independent_of_their_neighbours(small_world):
    world_dir, _ = small_world
    rows = pq.read_table(next((world_dir / "val").glob("*.parquet"))).to_pylist()[:6]
    a = long_text_rows(rows, seed=1)
    assert a == long_text_rows(rows, seed=1)
    assert long_text_rows(rows[3:], seed=1) == a[3:]
    assert [r["document"] for r in long_text_rows(rows, seed=2)] != [r["document"] for r in a]


def test_write_long_texts_writes_one_shard_per_input_shard_and_resumes(small_world, tmp_path):
    world_dir, cfg = small_world
    counts = write_long_texts(world_dir, tmp_path, seed=0, splits=("val", "test"))
    assert counts == {"val": cfg.n_val, "test": cfg.n_test}
    shard = next((tmp_path / "test").glob("*.parquet"))
    assert pq.read_schema(shard).equals(LONG_TEXT_SCHEMA, check_metadata=False)
    before = shard.stat().st_mtime_ns
    write_long_texts(world_dir, tmp_path, seed=0, splits=("test",))
    assert shard.stat().st_mtime_ns == before


def test_rows_without_a_scene_are_refused_with_the_row_id():
    with pytest.raises(ValueError, match="row 'x-1'"):
        long_text_rows([{"id": "x-1", "captions": ["a"], "annotation": None}])
