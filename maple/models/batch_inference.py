"""Batch embedding as a callable class for Ray Data `map_batches` (no Ray import: Ray only places it).

Each actor loads the embedder once from a saved directory, then embeds the named columns of each batch. A row whose
image is missing or cannot be decoded is not dropped: it gets a NaN embedding and the reason in `<column>_error`, so the
job can quarantine it.
"""

from __future__ import annotations

import numpy as np

from maple.data.images import ImageError, decode_image


class EmbedColumns:
    """For each image column `c` adds `c_emb` (N, D) float32 and `c_error` (N,) str; for each text column `c`
    adds `c_emb` (N, D); for each column `c` of text lists (several captions per row) adds `c_emb`, one (n_i, D)
    array per row.

    `model_path` may map names to several model directories (comparing variants): the outputs are then named
    `<name>/<c>_emb`, and the decoded images are shared between the models.
    """

    def __init__(self, model_path: str | dict[str, str], image_columns: tuple[str, ...] = (), text_columns: tuple[str, ...] = (),
                 text_list_columns: tuple[str, ...] = (), batch_size: int = 64, device: str | None = None):
        # torch and the model code load in the actor that embeds, not in the driver that only names this class
        from maple.models.checkpoint import resolve_device
        from maple.models.families import load_embedder

        self.device = resolve_device(device)
        paths = model_path if isinstance(model_path, dict) else {"": model_path}
        self.models = {name: load_embedder(path).to(self.device).eval() for name, path in paths.items()}
        self.image_columns, self.text_columns = tuple(image_columns), tuple(text_columns)
        self.text_list_columns = tuple(text_list_columns)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = {column: decode_column(batch[column]) for column in self.image_columns}
        for column, (_, _, errors) in decoded.items():
            batch[f"{column}_error"] = errors
        for name, model in self.models.items():
            prefix = f"{name}/" if name else ""
            for column in self.text_columns:
                texts = [str(t) for t in batch[column]]
                batch[f"{prefix}{column}_emb"] = model.encode_texts(texts, self.batch_size).numpy().astype(np.float32)
            for column in self.text_list_columns:
                lists = [[str(t) for t in texts] for texts in batch[column]]
                flat = model.encode_texts([t for texts in lists for t in texts], self.batch_size).numpy()
                bounds = np.cumsum([0] + [len(texts) for texts in lists])
                # One float32 (n_i, D) array per row, assigned one by one: np.array(list, dtype=object) would turn
                # a batch whose rows all have n captions into an (N, n, D) array of Python floats (float64), which
                # Ray cannot unify with another batch's float32 ragged tensors.
                column_emb = np.empty(len(lists), dtype=object)
                for row, (a, b) in enumerate(zip(bounds, bounds[1:])):
                    column_emb[row] = flat[a:b].astype(np.float32)
                batch[f"{prefix}{column}_emb"] = column_emb
            for column, (images, ok, errors) in decoded.items():
                emb = np.full((len(errors), model.embedding_dim), np.nan, dtype=np.float32)
                if images:
                    emb[ok] = model.encode_images(images, self.batch_size).numpy()
                batch[f"{prefix}{column}_emb"] = emb
        return batch


def decode_column(column: np.ndarray) -> tuple[list, list[int], np.ndarray]:
    """Decode a column of image bytes: (the decoded images, their row indices, a reason per row or "")."""
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
    return images, ok, np.array(errors, dtype=object)
