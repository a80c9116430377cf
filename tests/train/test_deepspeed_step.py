"""The step under a DeepSpeed engine (one process, gloo) equals the plain torch step; config checks of the loop."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist

from maple.config import load_config
from maple.losses.combined import MapleLoss
from maple.losses.config import LossConfig
from maple.models.config import ModelConfig
from maple.models.families import build_embedder
from maple.models.lora import select_trainable
from maple.train.batch import collate_judged
from maple.train.config import TrainConfig
from maple.train.loop import (
    TrainModule,
    check_config,
    deepspeed_config,
    lift_scalar_parameters,
    skip_deepspeed_shared_memory_op,
)
from maple.train.step import train_step
from tests.fixtures.rows import numpy_rows


@pytest.fixture
def single_process_group(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)  # what a launcher (or Ray Train) sets; DeepSpeed reads LOCAL_RANK
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_zero2_gradcache_step_updates_weights_like_the_plain_torch_step(single_process_group, world_judged):
    import deepspeed

    loss_cfg = LossConfig(rpa="listwise", kl_weight=0.5, hard_negatives=True)
    model = build_embedder(ModelConfig(), seed=0)
    select_trainable(model, "all")
    reference = TrainModule(copy.deepcopy(model), MapleLoss(loss_cfg))
    module = TrainModule(model, MapleLoss(loss_cfg))
    lift_scalar_parameters(module)
    rows = numpy_rows(world_judged.slice(0, 8))
    ref_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.5)
    train_step(reference.model, reference.loss_fn, collate_judged(reference.model, rows, loss_cfg), ref_opt)

    cfg = load_config(None, ["train.zero_stage=2", "train.max_grad_norm=0"])
    skip_deepspeed_shared_memory_op()  # as the loop does
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(cfg.train, 8))
    train_step(engine.module.model, engine.module.loss_fn, collate_judged(engine.module.model, rows, loss_cfg), engine,
               gradcache_chunk=3)
    for (name, a), (_, b) in zip(engine.module.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a.detach().reshape(b.shape), b.detach(), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("override, message", [
    ("train.zero_stage=4", "train.zero_stage=4"),
    ("train.batch_size=15", "multiple of train.num_workers"),
    ("train.num_workers=-1", "local mode"),
])
def test_check_config_refuses_what_cannot_run(override, message):
    with pytest.raises(ValueError, match=message):
        check_config(load_config(None, [override]).train)


def test_check_config_refuses_gradcache_with_zero3():
    with pytest.raises(ValueError, match="zero_stage=3"):
        check_config(TrainConfig(zero_stage=3, gradcache_chunk=4))
