"""Both reranker kinds on their tiny random twins: one interface, logits read from the right place, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maple.models.config import RerankerConfig
from maple.models.cross_encoder import CrossEncoderReranker
from maple.models.families import build_reranker, load_reranker
from maple.models.generative_reranker import MAX_LIST_SIZE, GenerativeReranker
from maple.models.reranker import MANIFEST

KINDS = ["cross_encoder", "generative"]


def _image(seed: int, size=(64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


IMAGES = [_image(0), _image(1, (96, 48)), _image(2, (40, 40))]
TEXTS = ["a small red circle", "a large blue square left of a small green triangle", "a white diamond"]


@pytest.fixture(scope="module", params=KINDS)
def reranker(request):
    return build_reranker(RerankerConfig(kind=request.param), seed=0).eval()


def test_build_reranker_gives_the_kinds_tiny_twin():
    assert isinstance(build_reranker(RerankerConfig(kind="cross_encoder")), CrossEncoderReranker)
    assert isinstance(build_reranker(RerankerConfig(kind="generative")), GenerativeReranker)


@pytest.mark.parametrize("query, candidates", [(TEXTS[0], IMAGES), (IMAGES[0], TEXTS), (TEXTS[0], TEXTS),
                                               (TEXTS[1], [IMAGES[0], TEXTS[2]])])
def test_score_gives_one_finite_float_per_candidate_for_any_modalities(reranker, query, candidates):
    scores = reranker.score(query, candidates)
    assert len(scores) == len(candidates) and all(isinstance(s, float) and np.isfinite(s) for s in scores)


def test_score_is_yes_minus_no_logit(reranker):
    with torch.no_grad():
        logits = reranker.pair_logits([TEXTS[0]] * 3, IMAGES)
    torch.testing.assert_close(torch.tensor(reranker.score(TEXTS[0], IMAGES)), logits[:, 0] - logits[:, 1])


def test_batched_scores_equal_one_pair_at_a_time(reranker):
    """Padding and image token counts differ across the batch; no candidate's score may depend on the others."""
    batched = reranker.score(IMAGES[1], TEXTS)
    alone = [reranker.score(IMAGES[1], [t])[0] for t in TEXTS]
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)
    batched = reranker.score(TEXTS[1], IMAGES)
    alone = [reranker.score(TEXTS[1], [im])[0] for im in IMAGES]
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)


def test_score_many_equals_each_request_scored_alone(reranker):
    """A server batches several requests' pairs into one pass (queries of either modality, lists of any length): each
    request must get the scores it gets alone."""
    requests = [(TEXTS[0], IMAGES), (IMAGES[1], TEXTS), (TEXTS[1], [IMAGES[2]]), (TEXTS[0], [TEXTS[2], IMAGES[0]])]
    many = reranker.score_many(requests, batch_size=4)  # chunks cut across requests
    assert [len(m) for m in many] == [3, 3, 1, 2]
    for got, (query, candidates) in zip(many, requests):
        np.testing.assert_allclose(got, reranker.score(query, candidates), rtol=1e-4, atol=1e-5)


def test_generative_pair_logits_are_the_full_lm_heads_yes_no_logits_at_the_answer_position():
    model = build_reranker(RerankerConfig(kind="generative")).eval()
    images: list = []
    prompts = [model.pair_prompt(TEXTS[0], IMAGES[0], images), model.pair_prompt(TEXTS[2], IMAGES[1], images)]
    inputs = model._encode(prompts, images)
    with torch.no_grad():
        full = model.model(**inputs).logits  # (N, L, V): every position, whole vocabulary
        got = model.pair_logits([TEXTS[0], TEXTS[2]], IMAGES[:2])
    last = inputs["attention_mask"].sum(1) - 1
    yes, no = model.tokenizer.convert_tokens_to_ids(["yes", "no"])
    expected = full[torch.arange(2), last][:, [yes, no]]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_generative_pair_prompt_is_the_judges_prompt_with_the_candidate_last():
    from maple.judge.prompt import judge_prompt

    model = build_reranker(RerankerConfig(kind="generative"))
    assert model.pair_prompt(TEXTS[0], TEXTS[1], []) == judge_prompt(TEXTS[0], TEXTS[1]).text


def test_generative_list_logits_read_the_slot_digits_after_the_primed_parenthesis():
    model = build_reranker(RerankerConfig(kind="generative")).eval()
    prompt = model.list_prompt(TEXTS[0], IMAGES, [])
    assert prompt.endswith("(") and "(3)" in prompt
    assert model.tokenizer.convert_ids_to_tokens(model.slot_ids[:3]) == ["1", "2", "3"]
    images: list = []
    inputs = model._encode([model.list_prompt(TEXTS[0], IMAGES, images)], images)
    with torch.no_grad():
        full = model.model(**inputs).logits[0, -1]
        got = model.list_logits([TEXTS[0]], [IMAGES])
    torch.testing.assert_close(got[0], full[model.slot_ids[:3]], rtol=1e-4, atol=1e-5)


def test_generative_list_longer_than_nine_slots_is_refused():
    model = build_reranker(RerankerConfig(kind="generative"))
    with pytest.raises(ValueError, match="listwise_size"):
        model.list_logits([TEXTS[0]], [[TEXTS[0]] * (MAX_LIST_SIZE + 1)])


def test_cross_encoder_list_logits_are_the_pair_scores_of_each_slot():
    model = build_reranker(RerankerConfig(kind="cross_encoder")).eval()
    with torch.no_grad():
        got = model.list_logits([TEXTS[0], IMAGES[0]], [IMAGES, TEXTS])
    expected = torch.tensor([model.score(TEXTS[0], IMAGES), model.score(IMAGES[0], TEXTS)])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_pair_logits_backpropagate_into_every_trainable_part(kind):
    model = build_reranker(RerankerConfig(kind=kind)).train()
    model.pair_logits([TEXTS[0], IMAGES[0]], [IMAGES[1], TEXTS[1]]).sum().backward()
    names = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("vision" in n or "visual" in n for n in names)  # the image side learns
    assert any("head" in n for n in names)  # the score head / LM head learns


@pytest.mark.parametrize("kind", KINDS)
def test_saved_reranker_loads_back_with_identical_scores_and_safetensors_weights(kind, tmp_path):
    model = build_reranker(RerankerConfig(kind=kind), seed=3).eval()
    model.save_pretrained(tmp_path / "r")
    assert (tmp_path / "r" / MANIFEST).exists()
    assert list((tmp_path / "r").rglob("*.safetensors")) and not list((tmp_path / "r").rglob("*.bin"))
    loaded = load_reranker(str(tmp_path / "r"))
    assert type(loaded) is type(model)
    assert loaded.score(IMAGES[0], TEXTS) == pytest.approx(model.score(IMAGES[0], TEXTS), abs=1e-6)


def test_cross_encoder_over_a_saved_embedder_reuses_its_towers(tmp_path):
    from maple.models.config import ModelConfig
    from maple.models.families import build_embedder

    embedder = build_embedder(ModelConfig(family="clip"), seed=5)
    embedder.save_pretrained(tmp_path / "emb")
    model = build_reranker(RerankerConfig(kind="cross_encoder", name_or_path=str(tmp_path / "emb")))
    assert isinstance(model, CrossEncoderReranker)
    for (name, a), (_, b) in zip(embedder.model.named_parameters(), model.encoder.model.named_parameters()):
        assert torch.equal(a, b), name


def test_a_fresh_cross_encoder_scores_as_its_embedder_ranks(tmp_path):
    """Residual design: before training, score = sim_scale · cos(embeddings), so the embedder's order is kept."""
    from maple.models.config import ModelConfig
    from maple.models.families import build_embedder

    embedder = build_embedder(ModelConfig(family="clip"), seed=6).eval()
    embedder.save_pretrained(tmp_path / "emb")
    model = build_reranker(RerankerConfig(kind="cross_encoder", name_or_path=str(tmp_path / "emb"))).eval()
    cos = (embedder.encode_texts(TEXTS) @ embedder.encode_images(IMAGES[:1]).T)[:, 0]
    expected = (model.sim_scale.detach() * cos).tolist()
    assert model.score(IMAGES[0], TEXTS) == pytest.approx(expected, abs=1e-4)
