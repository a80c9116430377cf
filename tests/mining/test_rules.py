"""The UniME-V2 mining rules and MAPLE's ranking, against hand-computed cases and an explicit-loop reference."""

import math

import numpy as np
import pytest

from maple.mining.rules import (
    cyclical_order,
    cyclical_sample,
    false_negative_mask,
    mine_batch,
    mine_hard_negatives,
    preference_ranking,
    row_seed,
)

NAN = float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# An independent reference: plain Python loops over floats, written from the rule's statement, not from the code.


def reference_mine(ids, scores, positive_score, positive_ids, k, beta, step):
    """Returns (picked ids or None when the row falls back, num_false_negatives, judge_missing, repeated)."""
    num_fn, missing, survivors = 0, 0, []
    for i, (cid, s) in enumerate(zip(ids, scores)):
        if s is None or math.isnan(s):
            missing += 1
            continue
        if cid in positive_ids or positive_score is None or math.isnan(positive_score):
            continue
        if s > positive_score - beta:
            num_fn += 1
        else:
            survivors.append((i, s))
    if not survivors:
        return None, num_fn, missing, None
    # best score first; among equal scores the earlier retrieval rank first
    ranked = [i for i, _ in sorted(survivors, key=lambda pair: (-pair[1], pair[0]))]
    picks, offset, position = [], 0, 0
    while len(picks) < k:
        if position >= len(ranked):  # end reached: next offset, or start again from the top when all are used
            offset = offset + 1 if offset + 1 < min(step, len(ranked)) else 0
            position = offset
        picks.append(ids[ranked[position]])
        position += step
    return picks, num_fn, missing, len(ranked) < k


# ---------------------------------------------------------------------------------------------------------------------
# false_negative_mask


def test_false_negative_is_strictly_above_positive_minus_beta():
    # threshold 0.75 - 0.25 = 0.5, exact in binary floating point
    mask = false_negative_mask([[0.875, 0.5, 0.25, 0.625]], [0.75], beta=0.25)
    assert mask.tolist() == [[True, False, False, True]]


def test_false_negative_mask_is_per_row_threshold():
    mask = false_negative_mask([[0.5, 0.25], [0.5, 0.25]], [0.5, 0.25], beta=0.125)
    assert mask.tolist() == [[True, False], [True, True]]


def test_nan_candidate_score_is_not_a_false_negative():
    mask = false_negative_mask([[NAN, 0.99]], [0.5])
    assert mask.tolist() == [[False, True]]


def test_nan_positive_score_marks_no_false_negative():
    mask = false_negative_mask([[0.1, 0.99, NAN]], [NAN])
    assert mask.tolist() == [[False, False, False]]


def test_false_negative_mask_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="candidate_scores must be"):
        false_negative_mask([[0.1, 0.2]], [0.5, 0.6])


# ---------------------------------------------------------------------------------------------------------------------
# cyclical sampling


def test_cyclical_order_takes_every_step_then_next_offsets():
    assert cyclical_order(12, 5).tolist() == [0, 5, 10, 1, 6, 11, 2, 7, 3, 8, 4, 9]


def test_cyclical_order_is_a_permutation():
    for n in range(0, 40):
        for step in (1, 2, 5, 7):
            assert sorted(cyclical_order(n, step).tolist()) == list(range(n))


def test_cyclical_sample_of_fifty_takes_every_fifth():
    order = np.arange(100, 150)
    assert cyclical_sample(order, 8, 5).tolist() == [100, 105, 110, 115, 120, 125, 130, 135]


def test_cyclical_sample_wraps_to_offset_one_when_the_end_is_reached():
    order = np.arange(20)
    assert cyclical_sample(order, 8, 5).tolist() == [0, 5, 10, 15, 1, 6, 11, 16]


def test_cyclical_sample_repeats_when_fewer_than_k():
    assert cyclical_sample([7, 3, 9], 8, 5).tolist() == [7, 3, 9, 7, 3, 9, 7, 3]


def test_cyclical_sample_without_survivors_raises():
    with pytest.raises(ValueError, match="no survivors"):
        cyclical_sample([], 8)


# ---------------------------------------------------------------------------------------------------------------------
# mine_hard_negatives: a hand-computed row. positive score 0.875, beta 0.125: threshold 0.75.

IDS = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "pos"]
SCORES = [0.9375, 0.75, 0.5, NAN, 0.625, 0.25, 0.875, 0.0625, 0.875]
# survivors by score: c1 .75, c4 .625, c2 .5, c5 .25, c7 .0625; cyclical order (n=5, step=2): 0, 2, 4, 1, 3


def test_mine_hand_computed_row():
    row = mine_hard_negatives(IDS, SCORES, 0.875, "pos", k=3, beta=0.125, step=2)
    assert row.hard_negative_ids == ["c1", "c2", "c7"]
    assert row.hard_negative_indices.tolist() == [1, 2, 7]
    assert row.hard_negative_scores.tolist() == [0.75, 0.5, 0.0625]
    assert row.num_false_negatives == 2  # c0 and c6; the positive itself is not counted
    assert row.judge_missing == 1  # c3
    assert (row.repeated, row.fallback) == (False, False)


def test_mine_repeats_survivors_when_fewer_than_k():
    row = mine_hard_negatives(IDS, SCORES, 0.875, "pos", k=8, beta=0.125, step=2)
    assert row.hard_negative_ids == ["c1", "c2", "c7", "c4", "c5", "c1", "c2", "c7"]
    assert (row.repeated, row.fallback) == (True, False)


def test_equal_scores_keep_retrieval_order():
    row = mine_hard_negatives(["a", "b", "c", "d"], [0.5, 0.5, 0.5, 0.75], 1.0, "p", k=3, step=1)
    assert row.hard_negative_ids == ["d", "a", "b"]


def test_positive_id_is_never_a_negative_even_with_a_low_score():
    row = mine_hard_negatives(["p", "a", "b"], [0.0, 0.25, 0.5], 0.5, "p", k=4, beta=0.125, step=1)
    assert "p" not in row.hard_negative_ids
    assert row.hard_negative_ids == ["a", "a", "a", "a"]  # b (0.5 > 0.375) is a false negative


def test_every_positive_id_of_a_query_is_excluded():
    ids = ["img1#0", "img1#1", "img2#0", "img3#0"]
    row = mine_hard_negatives(ids, [0.9, 0.1, 0.2, 0.3], 0.9, {"img1#0", "img1#1"}, k=2, step=1)
    assert row.hard_negative_ids == ["img3#0", "img2#0"]


def test_zero_survivors_draws_from_unscored_candidates_and_marks_fallback():
    ids = ["a", "b", "c", "d", "e"]
    scores = [0.99, NAN, 0.95, NAN, NAN]  # a and c are false negatives against 0.9
    row = mine_hard_negatives(ids, scores, 0.9, "p", k=3, rng=0)
    assert row.fallback and not row.repeated
    assert sorted(row.hard_negative_ids) == ["b", "d", "e"]
    assert row.hard_negative_scores.tolist() == [1.0, 1.0, 1.0]  # UniME-V2's score for random fallback negatives
    assert (row.num_false_negatives, row.judge_missing) == (2, 3)


def test_all_false_negatives_draw_from_all_non_positive_candidates():
    ids = ["p", "a", "b", "c"]
    row = mine_hard_negatives(ids, [0.9, 0.95, 0.99, 0.91], 0.9, "p", k=6, rng=1)
    assert row.fallback and row.repeated
    assert set(row.hard_negative_ids) == {"a", "b", "c"}  # small pool: every member used, then repeated
    assert row.hard_negative_scores.tolist() == [1.0] * 6
    assert row.num_false_negatives == 3


def test_missing_positive_score_falls_back_to_random_non_positive_candidates():
    ids = ["p", "a", "b", "c", "d"]
    row = mine_hard_negatives(ids, [0.9, 0.1, 0.2, 0.3, 0.4], None, "p", k=4, rng=2)
    assert row.fallback and not row.repeated
    assert sorted(row.hard_negative_ids) == ["a", "b", "c", "d"]
    assert row.num_false_negatives == 0


def test_fallback_score_none_reports_the_drawn_negatives_as_unscored():
    row = mine_hard_negatives(["a", "b", "c"], [NAN, NAN, NAN], 0.9, "p", k=2, rng=0, fallback_score=None)
    assert row.fallback and np.isnan(row.hard_negative_scores).all()


def test_mine_batch_without_a_fallback_score_writes_unknown_scores_as_none():
    out = mine_batch(**_batch(), k=3, beta=0.125, step=2, fallback_score=None)
    assert out["hard_negative_scores"][1] == [None, None, None]


def test_fallback_draws_are_reproducible_with_a_seed():
    ids = [f"c{i}" for i in range(20)]
    first = mine_hard_negatives(ids, [NAN] * 20, 0.9, "p", k=8, rng=123)
    again = mine_hard_negatives(ids, [NAN] * 20, 0.9, "p", k=8, rng=123)
    assert first.hard_negative_ids == again.hard_negative_ids
    assert len(set(first.hard_negative_ids)) == 8  # without replacement while the pool allows


def test_a_row_with_only_the_positive_cannot_be_mined():
    with pytest.raises(ValueError, match="no candidate other than the positive"):
        mine_hard_negatives(["p"], [0.9], 0.9, "p")


def test_mine_matches_loop_reference_on_random_rows():
    rng = np.random.default_rng(0)
    values = [0.0, 0.125, 0.25, 0.5, 0.5, 0.75, 0.875, 1.0, NAN]  # coarse values: many ties and exact thresholds
    checked = {"mined": 0, "fallback": 0}
    for _ in range(500):
        size = int(rng.integers(1, 30))
        ids = [f"c{i}" for i in range(size)]
        if rng.random() < 0.5:
            ids[int(rng.integers(size))] = "pos"
        scores = [float(rng.choice(values)) for _ in ids]
        positive = float(rng.choice(values))
        k, step, beta = int(rng.integers(1, 10)), int(rng.integers(1, 7)), float(rng.choice([0.01, 0.125]))
        if ids == ["pos"]:
            continue
        row = mine_hard_negatives(ids, scores, positive, "pos", k=k, beta=beta, step=step, rng=0)
        picks, num_fn, missing, repeated = reference_mine(ids, scores, positive, {"pos"}, k, beta, step)
        assert (row.num_false_negatives, row.judge_missing) == (num_fn, missing)
        assert "pos" not in row.hard_negative_ids and len(row.hard_negative_ids) == k
        if picks is None:
            assert row.fallback and (row.hard_negative_scores == 1.0).all()
            checked["fallback"] += 1
        else:
            assert row.hard_negative_ids == picks
            assert (row.repeated, row.fallback) == (repeated, False)
            np.testing.assert_array_equal(row.hard_negative_scores, [scores[ids.index(p)] for p in picks])
            checked["mined"] += 1
    assert min(checked.values()) > 50  # both branches were exercised


# ---------------------------------------------------------------------------------------------------------------------
# preference_ranking


def test_preference_ranking_orders_by_score_and_excludes_nan():
    assert preference_ranking([0.2, NAN, 0.9, 0.2, 0.5]).tolist() == [2, 4, 0, 3]


def test_preference_ranking_matches_loop_reference():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scores = [float(rng.choice([0.1, 0.3, 0.3, 0.7, NAN])) for _ in range(int(rng.integers(0, 15)))]
        expected = []
        for _ in range(sum(not math.isnan(s) for s in scores)):  # selection: the best not yet taken, first wins ties
            best = None
            for i, s in enumerate(scores):
                if not math.isnan(s) and i not in expected and (best is None or s > scores[best]):
                    best = i
            expected.append(best)
        assert preference_ranking(scores).tolist() == expected


# ---------------------------------------------------------------------------------------------------------------------
# mine_batch


def _batch():
    return dict(
        row_ids=["q0:t2i", "q1:t2i", "q2:t2i", "q3:t2i"],
        candidate_ids=[IDS, ["p", "a", "b"], ["p"], [f"c{i}" for i in range(12)]],
        candidate_scores=[SCORES, [0.9, None, None], [0.9], [None] * 12],
        positive_ids=["pos", "p", "p", "q3"],
        positive_scores=[0.875, 0.9, 0.9, None],
    )


def test_mine_batch_equals_row_by_row_mining_with_row_seeds():
    batch = _batch()
    out = mine_batch(**batch, k=3, beta=0.125, step=2, seed=7)
    for i in (0, 1, 3):
        row = mine_hard_negatives(
            batch["candidate_ids"][i],
            batch["candidate_scores"][i],
            batch["positive_scores"][i],
            batch["positive_ids"][i],
            k=3,
            beta=0.125,
            step=2,
            rng=np.random.default_rng(row_seed(7, batch["row_ids"][i])),
        )
        assert out["hard_negative_ids"][i] == row.hard_negative_ids
        assert out["hard_negative_indices"][i] == row.hard_negative_indices.tolist()
        assert (out["repeated"][i], out["fallback"][i]) == (row.repeated, row.fallback)
        assert out["num_false_negatives"][i] == row.num_false_negatives
        assert out["judge_missing"][i] == row.judge_missing
        assert out["mining_error"][i] is None


def test_mine_batch_writes_unknown_scores_as_none():
    out = mine_batch(**_batch(), k=3, beta=0.125, step=2)
    assert out["hard_negative_scores"][0] == [0.75, 0.5, 0.0625]
    assert out["hard_negative_scores"][1] == [1.0, 1.0, 1.0]  # fallback row: UniME-V2 scores them 1.0


def test_mine_batch_reports_an_unminable_row_and_continues():
    out = mine_batch(**_batch(), k=3)
    assert "q2:t2i" in out["mining_error"][2] and "no candidate other than the positive" in out["mining_error"][2]
    assert out["hard_negative_ids"][2] == []
    assert out["mining_error"][3] is None and len(out["hard_negative_ids"][3]) == 3


def test_mine_batch_fallback_does_not_depend_on_batch_composition():
    batch = _batch()
    whole = mine_batch(**batch, k=5, seed=3)
    alone = mine_batch(**{key: value[3:] for key, value in batch.items()}, k=5, seed=3)
    assert whole["hard_negative_ids"][3] == alone["hard_negative_ids"][0]
