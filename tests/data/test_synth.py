import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from maple.data.config import WorldConfig
from maple.data.synth import (
    NEGATIVE_TYPES,
    Obj,
    Scene,
    held_out_combinations,
    parse_caption,
    reference_score,
    render_scene,
    synthesize,
)

# A hand-built scene: a small red circle top-left, a large blue square bottom-right.
RED = Obj("circle", "red", "small", row=0, col=0)
BLUE = Obj("square", "blue", "large", row=2, col=2)
SCENE = Scene((RED, BLUE))


def test_true_complete_caption_scores_one():
    assert reference_score("a small red circle left of a large blue square", SCENE) == 1.0
    assert reference_score("a large blue square below a small red circle", SCENE) == 1.0


def test_false_relation_costs_one_fact_of_three():
    # facts: two mentions (true) + one relation (false) -> 2/3
    assert reference_score("a small red circle right of a large blue square", SCENE) == pytest.approx(2 / 3)


def test_swapped_attributes_make_both_mentions_false():
    # "a small blue circle", "a large red square" do not exist; the relation cannot hold; both objects unnamed.
    assert reference_score("a small blue circle left of a large red square", SCENE) == 0.0


def test_omitted_object_lowers_the_score():
    # one true mention; the blue square is unnamed -> 1 / (1 + 1)
    assert reference_score("a small red circle", SCENE) == 0.5


def test_extra_object_lowers_the_score():
    caption = "a small red circle left of a large blue square and a small green triangle"
    assert reference_score(caption, SCENE) == pytest.approx(3 / 4)


def test_false_fact_factor_multiplies_the_score_once_per_false_fact():
    # ε = 1 is the fraction; ε = 0.25: the false relation (1 of 3 facts) -> 2/3 · 0.25; the extra object's false mention
    # (1 of 4) -> 3/4 · 0.25; a true but incomplete caption keeps its completeness score; swapped attributes stay 0.
    cases = {"a small red circle right of a large blue square": (2 / 3, 1),
             "a small red circle left of a large blue square and a small green triangle": (3 / 4, 1),
             "a small red circle": (1 / 2, 0), "a small red circle left of a large blue square": (1.0, 0),
             "a small blue circle left of a large red square": (0.0, 3)}
    for caption, (fraction, n_false) in cases.items():
        assert reference_score(caption, SCENE, 1.0) == pytest.approx(fraction)
        assert reference_score(caption, SCENE, 0.25) == pytest.approx(fraction * 0.25 ** n_false)
    # the ranking an MLLM judge would give: true > true but incomplete > one false fact
    true, incomplete, one_false = (reference_score(c, SCENE, 0.25) for c in [
        "a large blue square below a small red circle", "a small red circle",
        "a small red circle left of a large blue square and a small green triangle"])
    assert true > incomplete > one_false


def test_caption_outside_the_grammar_is_a_clear_error():
    with pytest.raises(ValueError, match="not in the synthetic world's grammar"):
        parse_caption("two cats on a sofa")


def test_synthesis_is_deterministic_by_seed(tmp_path):
    cfg = WorldConfig(n_train=20, n_val=5, n_test=5, n_compositional=12, seed=3)
    synthesize(cfg, tmp_path / "a")
    synthesize(cfg, tmp_path / "b")
    for split in ("train", "val", "test", "compositional"):
        assert pq.read_table(tmp_path / "a" / split).equals(pq.read_table(tmp_path / "b" / split))
    synthesize(cfg.model_copy(update={"seed": 4}), tmp_path / "c")
    assert not pq.read_table(tmp_path / "a" / "train").equals(pq.read_table(tmp_path / "c" / "train"))


def test_every_caption_is_true_and_complete_for_its_scene(small_world):
    world, _ = small_world
    for row in pq.read_table(world / "train").to_pylist():
        scene = Scene.from_json(row["annotation"])
        assert all(reference_score(c, scene) == 1.0 for c in row["captions"])


def test_training_never_sees_held_out_combinations(small_world):
    world, cfg = small_world
    held_out = held_out_combinations(cfg)
    assert held_out
    for row in pq.read_table(world / "train").to_pylist():
        assert not any((o.colour, o.shape) in held_out for o in Scene.from_json(row["annotation"]).objects)


def test_compositional_negatives_score_below_the_true_caption(small_world):
    world, _ = small_world
    rows = pq.read_table(world / "compositional").to_pylist()
    assert {r["negative_type"] for r in rows} == set(NEGATIVE_TYPES)
    assert any(r["held_out"] for r in rows) and not all(r["held_out"] for r in rows)
    for r in rows:
        scene = Scene.from_json(r["annotation"])
        assert reference_score(r["negative_caption"], scene) < reference_score(r["caption"], scene) == 1.0


def test_swap_negatives_carry_the_image_they_truly_describe(small_world):
    world, _ = small_world
    rows = pq.read_table(world / "compositional").to_pylist()
    swaps = [r for r in rows if r["negative_type"] in ("swap_attributes", "swap_relation_order")]
    assert swaps and all(r["negative_image"] is not None for r in swaps)


def test_render_is_deterministic_and_mask_marks_each_object():
    img1, mask1 = render_scene(SCENE, 48)
    img2, mask2 = render_scene(SCENE, 48)
    assert np.array_equal(np.asarray(img1), np.asarray(img2)) and np.array_equal(mask1, mask2)
    assert set(np.unique(mask1)) == {0, 1, 2}
    ys, xs = np.nonzero(mask1 == 1)  # the red circle sits in the top-left cell
    assert ys.mean() < 16 and xs.mean() < 16
    red_pixels = np.asarray(img1)[mask1 == 1]
    assert (red_pixels[:, 0] > 200).all()


def test_held_out_combinations_are_a_fixed_fraction():
    cfg = WorldConfig(held_out_fraction=0.25)
    assert len(held_out_combinations(cfg)) == round(0.25 * len(cfg.colours) * len(cfg.shapes))
    assert held_out_combinations(cfg) == held_out_combinations(cfg)


def test_random_scenes_parse_back_from_their_captions():
    from maple.data.synth import describe, render_caption, sample_scene

    cfg, rng = WorldConfig(), random.Random(0)
    for _ in range(50):
        scene = sample_scene(rng, cfg, forbid=set())
        caption = render_caption(describe(scene, rng, cfg.relations))
        assert {t for t in parse_caption(caption).mentions} == {o.triple for o in scene.objects}


def test_scenes_hold_between_min_and_max_objects():
    from maple.data.synth import sample_scene

    def counts(**bounds):
        rng = random.Random(0)
        return {len(sample_scene(rng, WorldConfig(**bounds), set()).objects) for _ in range(60)}

    assert counts() == {1, 2, 3}
    assert counts(min_objects=2) == {2, 3}
    assert counts(min_objects=2, max_objects=2) == {2}
    with pytest.raises(ValueError, match=r"world.min_objects \(3\) is above world.max_objects \(2\)"):
        WorldConfig(min_objects=3, max_objects=2)
