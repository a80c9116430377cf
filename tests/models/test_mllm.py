"""The Qwen2-VL embedder family on its tiny random twin: shapes, pooling, attention direction, save/load, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from maple.models.config import ModelConfig
from maple.models.embedder import MANIFEST
from maple.models.families import build_embedder, load_embedder
from maple.models.mllm import IMAGE_PAD, LORA_TARGET_MODULES, TEXT_PROMPT, MLLMEmbedder, pool_hidden_states

TEXTS = ["a red circle", "a big blue square left of a small green triangle", "a yellow star"]


def tiny(seed: int = 0, **settings) -> MLLMEmbedder:
    torch.manual_seed(seed)
    return MLLMEmbedder.tiny(ModelConfig(family="qwen2vl", **settings)).eval()


def images() -> list[Image.Image]:
    """Three images of different sizes and aspect ratios, so their token counts differ."""
    g = torch.Generator().manual_seed(1)
    sizes = [(64, 64), (96, 48), (40, 40)]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for w, h in sizes]


def test_build_embedder_gives_the_qwen2vl_twin():
    emb = build_embedder(ModelConfig(family="qwen2vl"))
    assert isinstance(emb, MLLMEmbedder)
    assert emb.embedding_dim == ModelConfig().tiny.hidden_size


def test_texts_embed_to_unit_vectors_of_embedding_dim():
    emb = tiny()
    z = emb.encode_texts(TEXTS)
    assert z.shape == (len(TEXTS), emb.embedding_dim)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(len(TEXTS)))


def test_image_prompt_holds_one_pad_token_per_merged_patch_group():
    emb = tiny()
    batch = emb.preprocess(images())
    merge = emb.image_processor.merge_size ** 2
    n_pad = (batch["input_ids"] == emb.image_token_id).sum(1)
    assert torch.equal(n_pad, batch["image_grid_thw"].prod(-1) // merge)
    assert len(set(n_pad.tolist())) == 3  # the three sizes give three token counts
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == emb.image_token_id).int())


def test_images_of_different_sizes_embed_in_one_batch_as_they_do_alone():
    emb = tiny()
    ims = images()
    batched = emb.encode_images(ims)
    alone = torch.cat([emb.encode_images([im]) for im in ims])
    assert batched.shape == (3, emb.embedding_dim)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_images_and_texts_differ_in_embedding():
    emb = tiny()
    assert not torch.allclose(emb.encode_images(images()[:1]), emb.encode_texts(TEXTS[:1]), atol=1e-3)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_in_a_batch_does_not_change_a_text_embedding(pooling, bidirectional):
    emb = tiny(pooling=pooling, bidirectional=bidirectional)
    batch = emb.tokenize(TEXTS)
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    padded = emb.encode_texts(TEXTS)
    alone = torch.cat([emb.encode_texts([t]) for t in TEXTS])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_last_and_mean_pooling_give_different_embeddings():
    last, mean = tiny(pooling="last"), tiny(pooling="mean")
    same_weights = mean.model.state_dict()
    assert all(torch.equal(v, same_weights[k]) for k, v in last.model.state_dict().items())
    assert not torch.allclose(last.encode_texts(TEXTS), mean.encode_texts(TEXTS), atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_hidden_states_matches_explicit_loops(side):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    lengths = [5, 2, 3]
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, 5 - n:] = 1
    for i, n in enumerate(lengths):
        real = [j for j in range(5) if mask[i, j] == 1]
        mean = sum(hidden[i, j] for j in real) / len(real)
        torch.testing.assert_close(pool_hidden_states(hidden, mask, "mean")[i], mean)
        torch.testing.assert_close(pool_hidden_states(hidden, mask, "last")[i], hidden[i, real[-1]])


def _hidden_states_of_two_texts_differing_at_the_end(bidirectional: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    emb = tiny(bidirectional=bidirectional)
    a, b = emb.tokenize(["a red circle"]), emb.tokenize(["a red square"])
    differ = (a["input_ids"] != b["input_ids"]).nonzero()[:, 1]
    assert differ.tolist() == [2]  # only the third token differs
    with torch.no_grad():
        ha = emb.model(**a, use_cache=False).last_hidden_state[0]
        hb = emb.model(**b, use_cache=False).last_hidden_state[0]
    return ha, hb, 2


def test_causal_attention_keeps_early_tokens_blind_to_later_ones():
    ha, hb, k = _hidden_states_of_two_texts_differing_at_the_end(bidirectional=False)
    torch.testing.assert_close(ha[:k], hb[:k], atol=0, rtol=0)
    assert not torch.allclose(ha[k:], hb[k:])


def test_bidirectional_attention_lets_early_tokens_see_later_ones():
    ha, hb, k = _hidden_states_of_two_texts_differing_at_the_end(bidirectional=True)
    assert (ha[:k] - hb[:k]).abs().max() > 1e-3


def test_long_text_is_truncated_before_the_instruction():
    emb = tiny(max_text_tokens=8)
    long = " ".join(["red circle"] * 20)
    ids = emb.tokenize([long])["input_ids"][0]
    text_part = emb.tokenizer(long, add_special_tokens=False)["input_ids"][:8]
    instruction = emb.tokenizer(TEXT_PROMPT.format(text=""))["input_ids"]
    assert ids.tolist() == text_part + instruction


def test_save_and_load_round_trip_gives_identical_embeddings(tmp_path):
    emb = tiny(pooling="mean", bidirectional=True)
    emb.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert (manifest["family"], manifest["pooling"], manifest["bidirectional"]) == ("qwen2vl", "mean", True)
    assert (tmp_path / "model.safetensors").exists()
    loaded = load_embedder(tmp_path)
    assert isinstance(loaded, MLLMEmbedder) and (loaded.pooling, loaded.bidirectional) == ("mean", True)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), emb.encode_texts(TEXTS), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_images(images()), emb.encode_images(images()), atol=0, rtol=0)


def test_a_plain_qwen2vl_generation_checkpoint_loads_with_settings_from_the_config(tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    emb = tiny(pooling="mean")
    full = Qwen2VLForConditionalGeneration(emb.model.config)
    full.model.load_state_dict(emb.model.state_dict())
    full.save_pretrained(tmp_path)  # the hub layout: an LM head beside the model, no maple manifest
    emb.tokenizer.save_pretrained(tmp_path)
    emb.image_processor.save_pretrained(tmp_path)
    loaded = load_embedder(tmp_path, ModelConfig(family="qwen2vl", pooling="mean"))
    assert loaded.pooling == "mean" and not loaded.bidirectional
    torch.testing.assert_close(loaded.encode_texts(TEXTS), emb.encode_texts(TEXTS), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_images(images()), emb.encode_images(images()), atol=0, rtol=0)


def test_lora_wraps_the_language_model_and_backward_reaches_only_lora_weights():
    from peft import LoraConfig, get_peft_model

    emb = tiny(bidirectional=True)
    emb.model = get_peft_model(emb.model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES))
    wrapped = [n for n, _ in emb.named_parameters() if "lora_A" in n]
    assert wrapped and all(".language_model." in n for n in wrapped)
    z_text = emb.embed_texts(**emb.tokenize(TEXTS))
    z_image = emb.embed_images(**emb.preprocess(images()))
    (z_text * z_image).sum().backward()
    reached = {n: p.grad for n, p in emb.named_parameters() if p.grad is not None}
    assert reached and all("lora_" in n for n in reached)
    assert any(g.abs().sum() > 0 for n, g in reached.items() if "lora_B" in n)


def test_image_prompt_without_pad_token_is_rejected():
    emb = tiny()
    with pytest.raises(ValueError, match="exactly once"):
        MLLMEmbedder(emb.model, emb.tokenizer, emb.image_processor, image_prompt=f"{IMAGE_PAD}{IMAGE_PAD} twice")
