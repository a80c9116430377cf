"""The models a server runs: loading by spec, naming them (model id + version in every response), and the batched
embedding call of the Embedder deployment. No Ray here.

A spec is an MLflow registry URI (`models:/name/version` or `models:/name@alias`), a checkpoint directory, or None
for the tiny random twin (demo and tests; its id says so); `maple.serving.cards` resolves and names it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from maple.models.checkpoint import inference_precision, resolve_device, to_device
from maple.models.config import ModelConfig, RerankerConfig
from maple.models.embedder import Embedder
from maple.models.families import build_embedder, build_reranker, load_embedder, load_reranker
from maple.serving.api import ModelCard
from maple.serving.cards import TINY_SEED, local_model_dir, model_card
from maple.serving.errors import ItemError
from maple.serving.inputs import Content


def tiny_embedder() -> Embedder:
    """The demo embedder: the default family's tiny random twin, seeded so every process builds the same one."""
    return build_embedder(ModelConfig(), seed=TINY_SEED)


def load_served_embedder(spec: str | None, device: str | None = None,
                         tracking_uri: str | None = None) -> tuple[Embedder, ModelCard]:
    model = tiny_embedder() if spec is None else load_embedder(local_model_dir(spec, tracking_uri))
    model = model.to(resolve_device(device)).eval()
    card = model_card(spec, "embedding", tracking_uri, model.embedding_dim,
                      tiny_id=f"maple-tiny-{getattr(model, 'family', 'embedder')}")
    return model, card


def load_served_reranker(spec: str | None, device: str | None = None, tracking_uri: str | None = None):
    """The reranker (`maple.models.reranker`): an object with `score(query, candidates) -> list[float]`."""
    model = build_reranker(RerankerConfig()) if spec is None else load_reranker(local_model_dir(spec, tracking_uri))
    model = model.to(resolve_device(device)).eval()
    return model, model_card(spec, "rerank", tracking_uri, tiny_id=f"maple-tiny-{model.kind.replace('_', '-')}")


@torch.inference_mode()
def embed_contents(model: Embedder, contents: list[Content]) -> tuple[np.ndarray, list[int]]:
    """Embed a mixed batch of texts and images in one forward pass per modality.

    contents: N items, each a `str` or an RGB `PIL.Image`.
    Returns vectors (N, D) float32, L2-normalised, in input order, and each input's token count (0 for images).
    """
    text_at = [i for i, c in enumerate(contents) if isinstance(c, str)]
    image_at = [i for i, c in enumerate(contents) if isinstance(c, Image.Image)]
    if len(text_at) + len(image_at) != len(contents):
        raise TypeError("embed_contents takes str and PIL.Image items only")
    vectors = np.zeros((len(contents), model.embedding_dim), np.float32)
    tokens = [0] * len(contents)
    device = model.device
    if text_at:
        inputs = model.tokenize([contents[i] for i in text_at])
        mask = inputs.get("attention_mask")
        counts = mask.sum(dim=1) if mask is not None else torch.full((len(inputs["input_ids"]),),
                                                                        inputs["input_ids"].shape[1])
        if "window_owner" in inputs:  # long texts come as windows (MATE): a text's tokens are its windows' sum
            counts = torch.zeros(len(text_at), dtype=counts.dtype).index_add_(0, inputs["window_owner"], counts)
        counts = counts.tolist()
        with inference_precision(device):
            out = model.embed_texts(**to_device(inputs, device))
        vectors[text_at] = out.float().cpu().numpy()
        for i, n in zip(text_at, counts):
            tokens[i] = int(n)
    if image_at:
        inputs = model.preprocess([contents[i] for i in image_at])
        with inference_precision(device):
            out = model.embed_images(**to_device(inputs, device))
        vectors[image_at] = out.float().cpu().numpy()
    return vectors, tokens


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def embed_chunks(model: Embedder, chunks: list[list[Content]]) -> list[tuple[np.ndarray, list[int]] | ItemError]:
    """The Embedder's batch: every caller's chunk in one forward pass; each caller gets its (vectors (n, D), token
    counts), or an ItemError when its own input fails.

    The ingress checks every input before a batch forms, so a failure here is unexpected; when the batch raises,
    each chunk runs alone, and a chunk that fails alone is searched input by input for the culprit. The other
    callers' results are what they would get alone (an embedding does not depend on its batch-mates)."""
    try:
        vectors, tokens = embed_contents(model, [item for chunk in chunks for item in chunk])
    except Exception:  # noqa: BLE001 - whatever the model raises, it must not reach the other callers
        return [_embed_alone(model, chunk) for chunk in chunks]
    out, start = [], 0
    for chunk in chunks:
        out.append((vectors[start:start + len(chunk)], tokens[start:start + len(chunk)]))
        start += len(chunk)
    return out


def _embed_alone(model: Embedder, chunk: list[Content]) -> tuple[np.ndarray, list[int]] | ItemError:
    try:
        return embed_contents(model, chunk)
    except Exception as exc:  # noqa: BLE001
        whole = _failure(exc)
    for i, item in enumerate(chunk):
        try:
            embed_contents(model, [item])
        except Exception as exc:  # noqa: BLE001
            return ItemError(i, _failure(exc))
    return ItemError(None, whole)


def score_each(model, requests: list[tuple[Content, list[Content]]]) -> list[list[float] | ItemError]:
    """The Reranker's batch: every request's (query, document) pairs through the model together
    (`Reranker.score_many`); when the batch raises, each request is scored alone and one that fails gets its
    ItemError, the others what they would get alone."""
    try:
        return model.score_many(requests)
    except Exception:  # noqa: BLE001, S110 - whatever the model raises, it must not reach the other callers
        pass  # each request alone, below
    out: list[list[float] | ItemError] = []
    for query, documents in requests:
        try:
            out.append(model.score(query, documents))
        except Exception as exc:  # noqa: BLE001 - one request's failure is that request's only
            out.append(ItemError(None, _failure(exc)))
    return out
