import pytest
import torch
from PIL import Image

from maple.models.config import ModelConfig
from maple.models.families import build_embedder, load_embedder

TEXTS = ["a small red circle left of a large blue square", "a large green triangle"]


def _images():
    return [Image.new("RGB", (64, 64), (220, 40, 40)), Image.new("RGB", (40, 90), (50, 80, 230))]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_tiny_twin_round_trips_through_save_and_load(family, tmp_path):
    model = build_embedder(ModelConfig(family=family), seed=1)
    texts, images = model.encode_texts(TEXTS), model.encode_images(_images())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    again = load_embedder(tmp_path)
    assert torch.equal(again.encode_texts(TEXTS), texts)
    assert torch.equal(again.encode_images(_images()), images)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_embeddings_are_unit_norm_in_one_space(family):
    model = build_embedder(ModelConfig(family=family))
    t, i = model.encode_texts(TEXTS), model.encode_images(_images())
    assert t.shape == i.shape == (2, model.embedding_dim)
    assert torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(i.norm(dim=1), torch.ones(2), atol=1e-5)


def test_same_seed_builds_the_same_twin():
    a = build_embedder(ModelConfig(), seed=5).encode_texts(TEXTS)
    b = build_embedder(ModelConfig(), seed=5).encode_texts(TEXTS)
    assert torch.equal(a, b)


def test_embed_texts_is_differentiable():
    model = build_embedder(ModelConfig())
    out = model.embed_texts(**model.tokenize(TEXTS))
    out.sum().backward()
    assert model.model.text_model.embeddings.token_embedding.weight.grad is not None


def test_loading_a_directory_without_manifest_needs_the_family(tmp_path):
    with pytest.raises(FileNotFoundError, match="maple_embedder.json"):
        load_embedder(tmp_path)


def test_unknown_family_is_rejected():
    from maple.models.families import embedder_class

    with pytest.raises(ValueError, match="unknown model family"):
        embedder_class("resnet")
