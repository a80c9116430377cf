"""The reranker's training wiring: which candidates reach which loss targets, every listwise slot reachable, and a
few optimisation steps that learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from maple.models.config import RerankerConfig
from maple.models.families import build_reranker
from maple.recipes.reranker import (
    collate_reranker,
    hardest_negative,
    reranker_loss_terms,
    slot_generator,
    top_negatives,
)
from tests.fixtures.rows import numpy_rows as as_numpy_batch


def _same(a, b) -> bool:
    """Texts equal, or images with equal pixels."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_hardest_negative_is_the_highest_judge_score_first_on_ties():
    assert hardest_negative([0.2, 0.7, 0.1, 0.7]) == 1


def test_hardest_negative_of_a_fallback_row_without_scores_is_the_first():
    assert hardest_negative([float("nan")] * 3) == 0


def test_top_negatives_are_best_first_and_repeat_when_too_few():
    assert top_negatives([0.1, 0.5, float("nan"), 0.3], 3) == [1, 3, 0]
    assert top_negatives([0.1, 0.5], 5) == [1, 0, 1, 0, 1]


def test_collated_batch_pairs_each_query_with_its_positive_and_its_hardest_negative(judged_table):
    rows = as_numpy_batch(judged_table)
    batch = collate_reranker(rows, listwise_size=3)
    for i in range(len(batch)):
        direction = rows["direction"][i]
        scores = rows["hard_negative_scores"][i]
        best = int(np.argmax(scores))
        if direction == "t2i":
            assert batch.queries[i] == rows["query_text"][i]
            assert not isinstance(batch.positives[i], str) and not isinstance(batch.hardest[i], str)
        else:
            assert batch.positives[i] == rows["positive_text"][i]
            assert batch.hardest[i] == rows["hard_negative_texts"][i][best]


def test_listwise_list_holds_the_positive_at_its_slot_among_the_top_x_negatives_in_score_order(judged_table):
    rows = as_numpy_batch(judged_table)
    x = 3
    batch = collate_reranker(rows, listwise_size=x)
    for i in range(len(batch)):
        slot = int(batch.slots[i])
        lst = batch.lists[i]
        assert len(lst) == x + 1 and _same(lst[slot], batch.positives[i])
        negatives = lst[:slot] + lst[slot + 1:]
        if rows["direction"][i] == "i2t":
            order = np.argsort(-np.asarray(rows["hard_negative_scores"][i]), kind="stable")[:x]
            assert negatives == [rows["hard_negative_texts"][i][j] for j in order]


def test_every_listwise_slot_is_reachable_and_equally_likely(judged_table):
    rows = as_numpy_batch(judged_table.select(["id", "direction", "query_text", "query_image", "positive_text",
                                               "positive_image", "hard_negative_scores", "hard_negative_texts",
                                               "hard_negative_images"]).filter(
        np.array([d == "i2t" for d in judged_table.column("direction").to_pylist()])))
    x = 4
    slots = torch.cat([collate_reranker(rows, x, epoch=e).slots for e in range(300)])
    counts = torch.bincount(slots, minlength=x + 1)
    assert len(counts) == x + 1 and (counts > 0).all()  # the last slot included
    assert chisquare(counts.tolist()).pvalue > 1e-3


def test_slots_are_fixed_by_row_epoch_and_seed():
    draw = lambda *key: int(torch.randint(0, 1000, (1,), generator=slot_generator(*key)))  # noqa: E731
    assert draw("q1:t2i", 3, 0) == draw("q1:t2i", 3, 0)
    assert len({draw("q1:t2i", e, 0) for e in range(10)}) > 1


def _nll(logits: list[float], target: int) -> float:
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(v - top) for v in logits)))


def test_loss_terms_send_positives_to_yes_hardest_negatives_to_no_and_lists_to_the_slot(judged_table):
    """Reference: each pair's logits computed alone, the cross-entropies by explicit float64 loops."""
    torch.manual_seed(0)
    model = build_reranker(RerankerConfig(kind="cross_encoder")).eval()
    batch = collate_reranker(as_numpy_batch(judged_table.slice(0, 6)), listwise_size=2)
    with torch.no_grad():
        terms = reranker_loss_terms(model, batch, pairwise_weight=0.7, listwise_weight=0.3)
        yes_no = lambda q, c: model.pair_logits([q], [c])[0].double().tolist()  # noqa: E731
        pos = sum(_nll(yes_no(q, c), 0) for q, c in zip(batch.queries, batch.positives)) / len(batch)
        neg = sum(_nll(yes_no(q, c), 1) for q, c in zip(batch.queries, batch.hardest)) / len(batch)
        lst = sum(_nll([a - b for a, b in (yes_no(q, c) for c in cands)], int(s))
                  for q, cands, s in zip(batch.queries, batch.lists, batch.slots)) / len(batch)
    assert terms["pairwise"].item() == pytest.approx(pos + neg, abs=1e-4)
    assert terms["listwise"].item() == pytest.approx(lst, abs=1e-4)
    assert terms["loss"].item() == pytest.approx(0.7 * (pos + neg) + 0.3 * lst, abs=1e-4)


@pytest.mark.parametrize("kind", ["cross_encoder", "generative"])
def test_a_few_steps_on_one_batch_lower_the_loss(judged_table, kind):
    torch.manual_seed(0)
    model = build_reranker(RerankerConfig(kind=kind)).train()
    batch = collate_reranker(as_numpy_batch(judged_table.slice(0, 4)), listwise_size=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = reranker_loss_terms(model, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def _task(**reranker):
    from maple.recipes.reranker import RerankerTask

    return RerankerTask(RerankerConfig(**reranker))


def test_task_refuses_raw_pairs_before_any_worker_starts():
    from maple.data.schema import JUDGED_SCHEMA, PAIRS_SCHEMA

    _task().check({"train": JUDGED_SCHEMA})
    with pytest.raises(ValueError, match="mining job"):
        _task().check({"train": PAIRS_SCHEMA})


def test_task_refuses_a_generative_list_longer_than_its_digit_slots():
    from maple.data.schema import JUDGED_SCHEMA

    with pytest.raises(ValueError, match="listwise_size"):
        _task(kind="generative", listwise_size=9).check({"train": JUDGED_SCHEMA})


def test_task_step_with_a_torch_optimizer_returns_the_loss_terms_and_updates_weights(judged_table):
    task = _task(listwise_size=2)
    model, loss_fn = task.build(seed=0)
    batch = task.collate(model, as_numpy_batch(judged_table.slice(0, 4)), epoch=0)
    head_before = model.head.weight.detach().clone()
    optimizer = torch.optim.AdamW(task.trainable_parameters(model, loss_fn), lr=1e-3)
    terms = task.step(model, loss_fn, batch, optimizer)
    assert set(terms) == {"loss", "pairwise", "listwise"} and all(isinstance(v, float) for v in terms.values())
    assert not torch.equal(model.head.weight, head_before)
    metrics = task.evaluate(model, as_numpy_batch(judged_table.slice(4, 6)))
    assert set(metrics) == {"val_pairwise_accuracy", "val_listwise_accuracy"}


def test_reranker_settings_drive_the_shared_loop():
    from maple.recipes.reranker import training_section
    from maple.train.config import TrainConfig

    train = training_section(RerankerConfig(lr=0.02, steps=7, batch_size=3), TrainConfig(gradcache_chunk=4), "out/r")
    assert (train.lr, train.steps, train.batch_size, train.output) == (0.02, 7, 3, "out/r")
    assert train.gradcache_chunk is None and not train.lora


def test_task_trains_only_the_cross_layers_and_head_unless_train_towers():
    frozen, loss_fn = _task().build(seed=0)
    names = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("encoder.") for n in names) and "head.weight" in names
    tuned, _ = _task(train_towers=True).build(seed=0)
    assert all(p.requires_grad for p in tuned.parameters())
