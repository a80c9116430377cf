"""GPU-native defaults that must leave CPU runs exactly as they were: bf16 only where a CUDA card runs the model."""

import contextlib

import pytest
import torch

from maple.judge.hf import _dtype
from maple.models.checkpoint import inference_precision, to_device
from maple.train.config import TrainConfig
from maple.train.loop import deepspeed_config


def test_cpu_inference_runs_in_float32_without_autocast():
    assert isinstance(inference_precision(torch.device("cpu")), contextlib.nullcontext)
    with inference_precision(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_to_device_moves_tensors_and_leaves_the_rest():
    batch = {"ids": torch.arange(3), "names": ["a"]}
    moved = to_device(batch, torch.device("cpu"))
    assert torch.equal(moved["ids"], batch["ids"]) and moved["names"] == ["a"]


@pytest.mark.parametrize("use_gpu, bf16, enabled", [
    (False, None, False), (True, None, True), (True, False, False), (False, True, True)])
def test_deepspeed_bf16_follows_the_device_unless_set(use_gpu, bf16, enabled):
    tc = TrainConfig(use_gpu=use_gpu, bf16=bf16)
    assert deepspeed_config(tc, 8)["bf16"] == {"enabled": enabled}


def test_hf_judge_dtype_auto_is_the_checkpoints_on_cpu():
    assert _dtype("auto", torch.device("cpu")) == "auto"
    assert _dtype("float32", torch.device("cpu")) is torch.float32
    assert _dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
