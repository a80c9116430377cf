"""The pretrained MiniLM text tower: offline loading, sentence-transformers parity, chunked long-text embedding."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from maple.models.text_tower import TextTower, minilm_path

SENTENCES = ["A man is playing a guitar.", "Someone plays an acoustic guitar on stage.",
             "The central bank raised interest rates again."]
LONG = " ".join(f"Paragraph {i}: the red fox ran across the field near the river while birds sang in the trees."
                for i in range(20))


@pytest.fixture(scope="module")
def tower() -> TextTower:
    return TextTower()


def test_loads_offline_from_the_installed_package(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tower = TextTower()
    assert minilm_path().is_dir()
    assert (tower.dim, tower.window) == (384, 256)


def test_embeddings_equal_sentence_transformers(tower):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_path()), device="cpu")
    texts = [*SENTENCES, LONG]  # LONG is truncated to the 256-token window by both
    expected = reference.encode(texts, convert_to_tensor=True, batch_size=8).cpu()
    with torch.no_grad():
        got = tower.embed(**tower.tokenize(texts))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_token_states_cover_every_token_and_mask_the_padding(tower):
    inputs = tower.tokenize(SENTENCES)
    with torch.no_grad():
        hidden, mask = tower.token_states(**inputs)
    assert hidden.shape == (*inputs["input_ids"].shape, tower.dim)
    assert torch.equal(mask, inputs["attention_mask"]) and (mask == 0).any()


def test_similar_sentences_are_closer_than_unrelated_ones(tower):
    with torch.no_grad():
        z = tower.embed(**tower.tokenize(SENTENCES))
    assert z[0] @ z[1] > z[0] @ z[2] + 0.3
    assert z[0] @ z[1] > z[1] @ z[2] + 0.3


def test_chunked_embedding_of_a_text_within_one_window_equals_the_plain_embedding(tower):
    with torch.no_grad():
        torch.testing.assert_close(tower.chunked_embed(SENTENCES), tower.embed(**tower.tokenize(SENTENCES)),
                                   atol=1e-6, rtol=0)


def test_chunked_embedding_is_the_token_weighted_mean_of_overlapping_windows(tower):
    text, window, overlap = LONG[:400], 32, 8
    span = window - 2  # [CLS] ... [SEP]
    ids = tower.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 * span
    cls, sep = tower.tokenizer.cls_token_id, tower.tokenizer.sep_token_id
    total, start = torch.zeros(tower.dim, dtype=torch.float64), 0
    with torch.no_grad():
        while True:  # one window at a time, each embedded alone
            piece = ids[start:start + span]
            z = tower.embed(input_ids=torch.tensor([[cls, *piece, sep]]), attention_mask=torch.ones(1, len(piece) + 2,
                                                                                                    dtype=torch.long))
            total += len(piece) * z[0].double()
            if start + span >= len(ids):
                break
            start += span - overlap
        expected = (total / total.norm()).float()
        got = tower.chunked_embed([SENTENCES[0], text], window=window, overlap=overlap)
    torch.testing.assert_close(got[1], expected, atol=1e-5, rtol=0)


def test_a_text_longer_than_the_window_is_embedded_from_all_of_its_windows(tower):
    long = LONG + " " + " ".join(["Stock prices and interest rates dominated the financial news."] * 30)
    n_tokens = len(tower.tokenizer(long)["input_ids"])
    assert n_tokens > 2 * tower.window
    with torch.no_grad():
        chunked = tower.chunked_embed([long])[0]
        truncated = tower.embed(**tower.tokenize([long]))[0]
        finance = tower.embed(**tower.tokenize(["The central bank raised interest rates again."]))[0]
    torch.testing.assert_close(chunked.norm(), torch.tensor(1.0))
    # The tail (finance) is beyond the first window: only the chunked embedding sees it.
    assert chunked @ finance > truncated @ finance + 0.1


def test_chunked_embedding_rejects_an_overlap_as_large_as_the_window(tower):
    with pytest.raises(ValueError, match="overlap"):
        tower.chunked_embed(SENTENCES, window=16, overlap=14)
