"""Rows to model inputs: caption choice, column checks, mixed-modality slots and their chunks."""

from __future__ import annotations

import pytest
import torch

from maple.data.schema import JUDGED_SCHEMA, PAIRS_SCHEMA
from maple.losses.config import LossConfig
from maple.models.config import ModelConfig
from maple.models.families import build_embedder
from maple.train.batch import check_columns, choose_caption, collate_judged
from tests.fixtures.rows import numpy_rows


def test_caption_choice_is_deterministic_and_changes_across_epochs():
    picks = [[choose_caption(f"train-{i:06d}", 2, epoch, seed=0) for i in range(200)] for epoch in range(2)]
    assert picks[0] == [choose_caption(f"train-{i:06d}", 2, 0, seed=0) for i in range(200)]
    assert picks[0] != picks[1]
    assert set(picks[0]) == {0, 1}


@pytest.mark.parametrize("loss", [LossConfig(rpa="pairwise"), LossConfig(kl_weight=0.1),
                                  LossConfig(hard_negatives=True)])
def test_losses_that_need_judge_outputs_refuse_plain_pairs(loss):
    with pytest.raises(ValueError, match="missing columns"):
        check_columns(PAIRS_SCHEMA, loss, "pairs.parquet")


def test_infonce_accepts_pairs_and_judged_rows():
    assert check_columns(PAIRS_SCHEMA, LossConfig(), "p") == "pairs"
    assert check_columns(JUDGED_SCHEMA, LossConfig(rpa="listwise", kl_weight=1.0), "j") == "judged"


def test_mixed_directions_keep_each_rows_embedding_in_place(world_judged):
    model = build_embedder(ModelConfig(), seed=0).eval()
    rows = numpy_rows(world_judged.slice(0, 6))  # t2i, i2t, t2i, ...
    batch = collate_judged(model, rows)
    with torch.no_grad():
        query = batch.query.embed(model)
        alone = [model.encode_texts([rows["query_text"][i]])[0] if rows["direction"][i] == "t2i" else None
                 for i in range(6)]
    for i, expected in enumerate(alone):
        if expected is not None:
            torch.testing.assert_close(query[i], expected, rtol=1e-5, atol=1e-6)
    assert batch.hard_negatives.n == 6 * batch.k and batch.hard_negative_scores.isnan().sum() == 3


def test_chunks_of_mllm_image_inputs_embed_like_the_whole_slot(world_judged):
    model = build_embedder(ModelConfig(family="qwen2vl", image_size=32), seed=0).eval()
    batch = collate_judged(model, numpy_rows(world_judged.slice(0, 5)))
    with torch.no_grad():
        whole = batch.hard_negatives.embed(model)
        chunked = torch.cat([c.embed(model) for c in batch.hard_negatives.chunks(4)])
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
