import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from maple.eval.metrics import compositional_scores, modality_gap, recall_at_k, retrieval_metrics, similarity_separation


def test_recall_at_k_by_hand():
    scores = np.array([[0.9, 0.1, 0.5],   # relevant 0 ranked 1st
                       [0.9, 0.1, 0.5],   # relevant 2 ranked 2nd
                       [0.9, 0.1, 0.5]])  # relevant 1 ranked 3rd
    relevant = np.eye(3, dtype=bool)[[0, 2, 1]]
    assert recall_at_k(scores, relevant, (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}


def test_any_of_several_relevant_candidates_counts_as_a_hit():
    scores = np.array([[0.1, 0.8, 0.9]])
    relevant = np.array([[True, True, False]])  # the 2nd-ranked candidate is relevant
    assert recall_at_k(scores, relevant, (1, 2)) == {1: 0.0, 2: 1.0}


def test_ties_do_not_favour_the_relevant_candidate():
    scores = np.array([[0.5, 0.5]])
    assert recall_at_k(scores, np.array([[False, True]]), (1,)) == {1: 0.0}


def test_query_without_relevant_candidate_is_rejected():
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(np.zeros((1, 2)), np.zeros((1, 2), bool))


def test_retrieval_metrics_with_two_captions_per_image():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    # captions 0,1 describe image 0; caption 2 describes image 1 but points at image 0.
    texts = np.array([[1.0, 0.0], [0.8, 0.6], [0.9, 0.3]])
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    m = retrieval_metrics(images, texts, np.array([0, 0, 1]), ks=(1,))
    assert m["t2i_r@1"] == pytest.approx(2 / 3)
    # image 0's best text is caption 0 (its own); image 1's best text is caption 1 (image 0's) -> 1/2
    assert m["i2t_r@1"] == pytest.approx(1 / 2)


def test_compositional_scores_by_hand():
    s = compositional_scores(np.array([0.9, 0.2]), np.array([0.5, 0.3]),
                             np.array([0.4, np.nan]), np.array([0.8, np.nan]))
    assert list(s["accuracy"]) == [1.0, 0.0]
    assert s["text"][0] == 1.0 and s["image"][0] == 1.0 and s["group"][0] == 1.0
    assert np.isnan(s["text"][1]) and np.isnan(s["group"][1])


def test_winoground_image_score_fails_when_the_caption_prefers_the_other_image():
    s = compositional_scores(np.array([0.5]), np.array([0.1]), np.array([0.6]), np.array([0.9]))
    assert s["text"][0] == 1.0 and s["image"][0] == 0.0 and s["group"][0] == 0.0


def test_modality_gap_is_distance_between_means():
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[-1.0, 0.0], [0.0, -1.0]])
    assert modality_gap(img, txt) == pytest.approx(np.sqrt(2))


def test_similarity_separation_matches_scipy_on_the_split_similarities():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    t2i = np.array([0, 0, 1, 2, 3, 3])
    sim = txt @ img.T
    matched = np.zeros_like(sim, bool)
    matched[np.arange(6), t2i] = True
    out = similarity_separation(img, txt, t2i)
    assert out["w1_matched_unmatched"] == pytest.approx(wasserstein_distance(sim[matched], sim[~matched]))
    assert out["matched_mean"] == pytest.approx(sim[matched].mean())
