import numpy as np
import pytest

from maple.data.synth import Obj, Scene, reference_score
from maple.judge.base import make_pairs
from maple.judge.config import JudgeConfig
from maple.judge.reference import ReferenceDataError, ReferenceJudge

SCENE = Scene((Obj("circle", "red", "small", 0, 0), Obj("square", "blue", "large", 0, 2)))
CAPTIONS = ["a small red circle left of a large blue square", "a small red circle", "a large green triangle",
            "a large blue square left of a small red circle"]


def t2i_pairs(captions, scene=SCENE):
    return make_pairs([{"query_id": f"q{i}", "query_text": c, "candidate_id": "img", "candidate_image": b"png",
                        "candidate_annotation": scene.to_json()} for i, c in enumerate(captions)])


def test_reference_scores_are_the_synthetic_worlds_ground_truth():
    got = ReferenceJudge().score(t2i_pairs(CAPTIONS))
    expected = [reference_score(c, SCENE) for c in CAPTIONS]
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert got[0] == 1.0 and got[0] > got[1] > got[2]


def test_reference_judge_applies_the_configured_false_fact_factor():
    got = ReferenceJudge(JudgeConfig(false_fact_factor=0.2)).score(t2i_pairs(CAPTIONS))
    np.testing.assert_allclose(got, [reference_score(c, SCENE, 0.2) for c in CAPTIONS], atol=1e-7)
    assert got[3] == pytest.approx(0.2 * 2 / 3)  # the relation-swapped caption: one false fact of three


def test_reference_reads_the_scene_from_the_query_side_for_image_to_text():
    pairs = make_pairs([{"query_id": "img", "query_image": b"png", "query_annotation": SCENE.to_json(),
                         "candidate_id": "c", "candidate_text": CAPTIONS[1]}])
    assert ReferenceJudge().score(pairs)[0] == pytest.approx(reference_score(CAPTIONS[1], SCENE))


def test_reference_refuses_an_image_without_annotation_naming_the_pair():
    pairs = make_pairs([{"query_id": "q7", "query_text": "a red circle", "candidate_id": "photo-3",
                         "candidate_image": b"jpeg", "candidate_annotation": None}])
    with pytest.raises(ReferenceDataError, match="photo-3.*annotation"):
        ReferenceJudge().score(pairs)


def test_reference_noise_is_a_function_of_the_pair_not_of_the_batch():
    judge = ReferenceJudge(JudgeConfig(noise_std=0.2, noise_flip_rate=0.3, noise_seed=5))
    pairs = t2i_pairs(CAPTIONS)
    whole = judge.score(pairs)
    one_by_one = [judge.score({k: v[i:i + 1] for k, v in pairs.items()})[0] for i in range(len(CAPTIONS))]
    np.testing.assert_array_equal(whole, one_by_one)
    assert np.all((whole >= 0) & (whole <= 1))


def test_reference_flip_rate_flips_that_share_of_scores():
    captions = [CAPTIONS[0]] * 2000
    pairs = t2i_pairs(captions)
    pairs["query_id"] = [f"q{i}" for i in range(2000)]
    got = ReferenceJudge(JudgeConfig(noise_flip_rate=0.25)).score(pairs)
    assert set(np.unique(got)) <= {0.0, 1.0}
    assert abs(np.mean(got == 0.0) - 0.25) < 0.04  # binomial sd ≈ 0.01
