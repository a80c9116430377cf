"""MateEmbedder: texts of any length through the LLM-side embedder, images through the VLM image encoder and P."""

import pytest
import torch

from maple.models.embedder import normalise
from maple.models.families import build_embedder, load_embedder
from maple.models.mate import MateEmbedder, Projection

SHORT = "a small red circle left of a large blue square"
LONG = " ".join(f"The backdrop is calm and muted number {i}." for i in range(20))  # ~180 word pieces


def test_texts_are_embedded_by_the_text_towers_chunk_and_pool_rule(tiny_mate):
    texts = [SHORT, LONG, LONG + " " + SHORT]
    inputs = tiny_mate.tokenize(texts)
    assert int(inputs["window_owner"].max()) == 2 and len(inputs["window_owner"]) > 3  # long texts: several windows
    expected = tiny_mate.llm.chunked_embed(texts, overlap=tiny_mate.overlap)
    assert torch.allclose(tiny_mate.embed_texts(**inputs), expected, atol=1e-6)
    assert torch.allclose(tiny_mate.encode_texts(texts), expected, atol=1e-6)


def test_a_text_within_the_window_gets_the_plain_sentence_embedding(tiny_mate):
    plain = tiny_mate.llm.embed(**tiny_mate.llm.tokenize([SHORT]))
    assert torch.allclose(tiny_mate.encode_texts([SHORT]), plain, atol=1e-6)


def test_long_text_embedding_sees_words_past_the_vlm_window_where_the_vlm_does_not(tiny_mate):
    a, b = LONG + " a small red circle", LONG + " a large green diamond"
    mate = tiny_mate.encode_texts([a, b])
    assert not torch.allclose(mate[0], mate[1], atol=1e-4)
    vlm = tiny_mate.vlm.encode_texts([a, b])  # the VLM's window (16 tokens here, 77 for CLIP) truncates the tails
    assert torch.equal(vlm[0], vlm[1])


def test_image_embedding_is_the_normalised_projection_of_the_vlm_image_embedding(tiny_mate, mate_rows):
    from maple.data.images import decode_image

    images = [decode_image(bytes(b)) for b in mate_rows["image"][:3]]
    pixels = tiny_mate.preprocess(images)["pixel_values"]
    expected = normalise(tiny_mate.projection(tiny_mate.vlm.embed_images(pixels)))
    out = tiny_mate.embed_images(pixel_values=pixels)
    assert out.shape == (3, tiny_mate.llm.dim) and torch.allclose(out, expected, atol=1e-6)


def test_save_and_load_keep_embeddings_with_lora_merged(tiny_mate, mate_rows, tmp_path):
    from maple.data.images import decode_image

    tiny_mate.add_image_lora(rank=2, alpha=4)
    with torch.no_grad():  # LoRA's B starts at zero; make the adapters change the output
        for name, param in tiny_mate.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    images = [decode_image(bytes(b)) for b in mate_rows["image"][:4]]
    before_images, before_texts = tiny_mate.encode_images(images), tiny_mate.encode_texts([SHORT, LONG])
    tiny_mate.save_pretrained(tmp_path / "mate")
    loaded = load_embedder(tmp_path / "mate")
    assert isinstance(loaded, MateEmbedder)
    assert torch.allclose(loaded.encode_images(images), before_images, atol=1e-5)
    assert torch.allclose(loaded.encode_texts([SHORT, LONG]), before_texts, atol=1e-6)
    assert not any("lora_" in name for name, _ in loaded.named_parameters())


def test_build_embedder_makes_the_configured_projection(mate_config):
    model = build_embedder(mate_config(projection="linear"), seed=0)
    assert isinstance(model, MateEmbedder)
    assert [type(m).__name__ for m in model.projection.net] == ["Linear"]
    assert model.projection.in_dim == model.vlm.embedding_dim and model.embedding_dim == model.llm.dim
    assert model.vlm.max_text_tokens == 16


def test_only_lora_and_projection_train_after_adding_image_lora(tiny_mate):
    # At construction the VLM and the LLM are frozen and P trains (stage 1).
    assert {n for n, p in tiny_mate.named_parameters() if p.requires_grad} == {
        f"projection.{n}" for n, _ in tiny_mate.projection.named_parameters()}
    tiny_mate.add_image_lora(rank=2, alpha=4)
    trainable = {n for n, p in tiny_mate.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projection.") or (".vision_model." in n and "lora_" in n)
                             for n in trainable)
    assert any("lora_A" in n for n in trainable) and any(n.startswith("projection.") for n in trainable)


def test_unknown_projection_names_the_config_key():
    with pytest.raises(ValueError, match="model.mate.projection"):
        Projection(4, 8, "conv")


def test_loading_a_directory_without_manifest_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.mate.vlm"):
        MateEmbedder.from_pretrained(tmp_path)
