"""The PAL aligner: frozen encoders (no gradient, no optimizer state, unchanged), anchors train, save/load."""

import random

import pytest
import torch

from maple.data.config import WorldConfig
from maple.data.synth import render_scene, sample_scene
from maple.losses.anchor import pal_loss
from maple.models.anchor import AnchorAligner, AnchorHead
from maple.models.config import ModelConfig
from maple.models.families import build_embedder, load_embedder

CAPTIONS = ["a large red circle", "a small blue square left of a large green triangle", "a small white diamond",
            "a large yellow square above a small purple circle"]


@pytest.fixture(scope="module")
def aligner() -> AnchorAligner:
    return build_embedder(ModelConfig(family="pal", pal={"num_anchors": 16}), seed=0)


@pytest.fixture(scope="module")
def images():
    rng = random.Random(0)
    return [render_scene(sample_scene(rng, WorldConfig(), set()), 64)[0] for _ in range(4)]


def _encoder_params(model: AnchorAligner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.")}


def test_only_the_two_anchor_matrices_require_gradients(aligner):
    trainable = [n for n, p in aligner.named_parameters() if p.requires_grad]
    assert trainable == ["head.image_anchors", "head.text_anchors"]
    assert aligner.head.image_anchors.shape == (16, aligner.image_dim)
    assert aligner.head.text_anchors.shape == (16, aligner.text_dim)


def test_training_steps_change_anchors_but_not_encoders_and_optimizer_holds_only_anchors(images):
    model = build_embedder(ModelConfig(family="pal", pal={"num_anchors": 16}), seed=1)
    before = _encoder_params(model)
    anchors_before = model.head.image_anchors.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels, tokens = model.preprocess(images), model.tokenize(CAPTIONS)
    model.train()
    for _ in range(2):
        loss = pal_loss(model.embed_images(**pixels), model.embed_texts(**tokens), gather=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state_params = {id(p) for p in optimizer.state}
    assert state_params == {id(model.head.image_anchors), id(model.head.text_anchors)}
    after = _encoder_params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))
    assert not torch.equal(anchors_before, model.head.image_anchors)


def test_train_mode_keeps_the_frozen_encoders_in_eval_mode(aligner):
    aligner.train()
    assert aligner.head.training
    assert not aligner.image_encoder.training and not aligner.text_tower.training
    aligner.eval()


def test_embeddings_are_unit_k_vectors_for_images_and_texts(aligner, images):
    img, txt = aligner.encode_images(images), aligner.encode_texts(CAPTIONS)
    assert img.shape == (4, 16) and txt.shape == (4, 16)
    assert torch.allclose(img.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(4), atol=1e-5)


def test_patch_vectors_lie_on_the_vit_patch_grid(aligner, images):
    vectors = aligner.patch_vectors(images[:2])
    side = 64 // ModelConfig().tiny.patch_size
    assert vectors.shape == (2, side, side, 16)


def test_saved_aligner_reloads_by_family_with_identical_embeddings(aligner, images, tmp_path):
    aligner.save_pretrained(tmp_path / "pal")
    loaded = load_embedder(tmp_path / "pal")
    assert isinstance(loaded, AnchorAligner)
    assert torch.allclose(loaded.encode_images(images), aligner.encode_images(images), atol=1e-5)
    assert torch.allclose(loaded.encode_texts(CAPTIONS), aligner.encode_texts(CAPTIONS), atol=1e-5)


def test_anchors_drawn_from_tokens_are_unit_rows_of_the_token_pool():
    head = AnchorHead(4, 3, num_anchors=5, tau_pool=0.03)
    image_pool = torch.tensor([[2.0, 0, 0, 0], [0, 0, 3.0, 0]])
    head.init_from_tokens(image_pool, torch.tensor([[0, 1.0, 0]]), seed=0)
    assert torch.allclose(head.image_anchors.norm(dim=1), torch.ones(5))
    nearest = (head.image_anchors @ torch.nn.functional.normalize(image_pool, dim=1).T).amax(dim=1)
    assert (nearest > 0.99).all()
