"""The embedder recipe: LoRA adapters as the only trainable parameters; a tiny MLLM embedder with LoRA (and DoRA)
trains a few steps and exports merged weights that load_embedder reads back."""

from __future__ import annotations

import pytest
import torch

from maple.config import Config
from maple.models.families import load_embedder
from maple.recipes.embedder import EmbedderTask
from maple.train.batch import collate_pairs
from maple.train.step import train_step
from tests.fixtures.rows import numpy_rows


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_mllm_lora_trains_and_its_merged_export_embeds_like_the_trained_model(world_pairs, tmp_path, dora):
    cfg = Config.model_validate({"model": {"family": "qwen2vl", "image_size": 32},
                                 "train": {"lora": True, "lora_rank": 4, "lora_dora": dora}})
    task = EmbedderTask(cfg.model, cfg.train)
    model, loss_fn = task.build(seed=0)
    params = task.trainable_parameters(model, loss_fn)
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    batch = collate_pairs(model, numpy_rows(world_pairs.slice(0, 6)), epoch=0, seed=0)
    losses = [train_step(model, loss_fn, batch, optimizer)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    texts = ["a red circle left of a blue square", "a small green triangle"]
    trained = model.encode_texts(texts)
    task.export(model, tmp_path / "export")
    loaded = load_embedder(tmp_path / "export")
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    torch.testing.assert_close(loaded.encode_texts(texts), trained, rtol=1e-4, atol=1e-5)


def test_embedder_task_builds_lora_adapters_as_the_only_trainable_parameters():
    cfg = Config.model_validate({"train": {"lora": True, "lora_rank": 4}})
    model, loss_fn = EmbedderTask(cfg.model, cfg.train).build(seed=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
