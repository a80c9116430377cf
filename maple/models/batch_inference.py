"""Batch embedding as a callable class for Ray Data `map_batches` (no Ray import: Ray only places it).

Each actor loads the embedder once from a saved directory, then embeds the named columns of each batch. A row whose
image is missing or cannot be decoded is not dropped: it gets a NaN embedding and the reason in `<column>_error`, so the
job can quarantine it.
"""

from __future__ import annotations

import numpy as np
import torch

from maple.data.images import ImageError, decode_image
from maple.models.embedder import load_embedder


class EmbedColumns:
    """For each image column `c` adds `c_emb` (N, D) float32 and `c_error` (N,) str; for each text column `c`
    adds `c_emb` (N, D); for each column `c` of text lists (several captions per row) adds `c_emb`, one (n_i, D)
    array per row."""

    def __init__(self, model_path: str, image_columns: tuple[str, ...] = (), text_columns: tuple[str, ...] = (),
                 text_list_columns: tuple[str, ...] = (), batch_size: int = 64, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_embedder(model_path).to(self.device).eval()
        self.image_columns, self.text_columns = tuple(image_columns), tuple(text_columns)
        self.text_list_columns = tuple(text_list_columns)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for column in self.text_columns:
            texts = [str(t) for t in batch[column]]
            batch[f"{column}_emb"] = self.model.encode_texts(texts, self.batch_size).numpy().astype(np.float32)
        for column in self.text_list_columns:
            lists = [[str(t) for t in texts] for texts in batch[column]]
            flat = self.model.encode_texts([t for texts in lists for t in texts], self.batch_size).numpy()
            bounds = np.cumsum([0] + [len(texts) for texts in lists])
            batch[f"{column}_emb"] = np.array([flat[a:b].astype(np.float32) for a, b in zip(bounds, bounds[1:])],
                                              dtype=object)
        for column in self.image_columns:
            batch[f"{column}_emb"], batch[f"{column}_error"] = self.embed_images(batch[column])
        return batch

    def embed_images(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, ok, errors = [], [], []
        for i, data in enumerate(column):
            if data is None:
                errors.append("missing")
                continue
            try:
                images.append(decode_image(bytes(data)))
                ok.append(i)
                errors.append("")
            except ImageError as exc:
                errors.append(str(exc.reason))
        emb = np.full((len(errors), self.model.embedding_dim), np.nan, dtype=np.float32)
        if images:
            emb[ok] = self.model.encode_images(images, self.batch_size).numpy()
        return emb, np.array(errors, dtype=object)
