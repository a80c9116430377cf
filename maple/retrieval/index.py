"""Global top-K retrieval over L2-normalised embeddings: faiss behind a small API (inner product = cosine).

Kinds (measured with bench/retrieval.py, 256-d, 2 threads; docs/benchmarks/retrieval.md):
- "exact": IndexFlatIP, brute force, recall 1; ~1.4 CPU-ms per query at 100k candidates, ~15 at 1M. The "auto"
  choice up to `exact_max` candidates: a 100k-query pass over 100k takes ~70 s on 2 cores, and ANN would save little.
- "ivf": IndexIVFFlat, k-means into `nlist` ≈ 4·sqrt(M) lists, `nprobe` scanned per query. The "auto" choice above
  `exact_max`: at 1M it builds in ~160 CPU-s and, with nprobe = 128, reaches recall@50 0.97 at a quarter of exact's
  cost per query on structured vectors. On structureless (i.i.d. random) vectors no ANN index beats exact search at
  recall 0.95.
- "hnsw": IndexHNSWFlat graph: the cheapest search at equal recall on structured vectors, but a build 4-8 times
  IVF's (64-133 CPU-s at 100k, ~10× that at 1M), so "auto" does not pick it.

Only the vectors' positions are indexed; optional string ids travel beside (saved with the index).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

Kind = Literal["auto", "exact", "ivf", "hnsw"]

# Defaults chosen with bench/retrieval.py (docs/benchmarks/retrieval.md).
DEFAULT_NPROBE = 128  # recall@50 >= 0.95 at 100k (nlist 1265) and 1M (nlist 4000) on the structured set
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 128
_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per k-means centroid
_TRAIN_POINTS_PER_LIST = 64  # k-means sample: enough for stable centroids, bounded cost at 1M
_NORM_TOLERANCE = 1e-3

_INDEX_FILE = "index.faiss"
_META_FILE = "index.json"


def default_nlist(num_vectors: int) -> int:
    """IVF list count: ≈ 4·sqrt(M), at most M / 39 so that k-means has enough points per centroid."""
    return max(1, min(round(4 * math.sqrt(num_vectors)), num_vectors // _MIN_POINTS_PER_LIST))


class VectorIndex:
    """A built faiss index over M vectors of dimension D, its kind and parameters, and optional ids."""

    def __init__(self, index: faiss.Index, kind: str, params: dict[str, Any], ids: list[str] | None = None):
        if ids is not None and len(ids) != index.ntotal:
            raise ValueError(f"VectorIndex: {len(ids)} ids for {index.ntotal} vectors")
        self.index = index
        self.kind = kind
        self.params = dict(params)
        self.ids = ids
        self._apply_search_params()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade recall for speed after the build: `nprobe` (ivf), `ef_search` (hnsw)."""
        if nprobe is not None:
            if self.kind != "ivf":
                raise ValueError(f"nprobe applies to an ivf index, this one is {self.kind!r}")
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError(f"ef_search applies to an hnsw index, this one is {self.kind!r}")
            self.params["ef_search"] = int(ef_search)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.kind == "ivf":
            self.index.nprobe = min(self.params["nprobe"], self.params["nlist"])
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.params["ef_search"]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product (cosine for normalised vectors).

        queries: (N, D) float32, L2-normalised.
        Returns scores (N, k') float32 and indices (N, k') int64, best first, with k' = min(k, M). An approximate
        index may find fewer than k' (few vectors in the probed lists): those slots hold index −1, score −inf.
        """
        queries = _as_unit_rows(queries, "queries", self.dim)
        k = min(int(k), self.ntotal)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, indices = self.index.search(queries, k)
        scores[indices < 0] = -np.inf  # faiss fills missing slots with -FLT_MAX
        return scores, indices.astype(np.int64, copy=False)

    def ids_at(self, indices: np.ndarray) -> list[list[str | None]]:
        """Ids of `search` indices (N, k): None where the index is −1. Needs an index built with ids."""
        if self.ids is None:
            raise ValueError("this index was built without ids; pass ids= to build_index")
        return [[self.ids[i] if i >= 0 else None for i in row] for row in np.asarray(indices).tolist()]

    def save(self, path: str | Path) -> None:
        """Writes `path/index.faiss` (faiss.write_index) and `path/index.json` (kind, params, ids)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / _INDEX_FILE))
        meta = {"kind": self.kind, "params": self.params, "dim": self.dim, "ntotal": self.ntotal, "ids": self.ids}
        (folder / _META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        folder = Path(path)
        for name in (_INDEX_FILE, _META_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing; expected a folder written by VectorIndex.save")
        meta = json.loads((folder / _META_FILE).read_text())
        index = faiss.read_index(str(folder / _INDEX_FILE))
        if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
            raise ValueError(
                f"{folder}: {_INDEX_FILE} holds {index.ntotal}×{index.d} but {_META_FILE} says "
                f"{meta['ntotal']}×{meta['dim']}; the two files come from different saves"
            )
        return cls(index, meta["kind"], meta["params"], meta["ids"])


def build_index(
    vectors: np.ndarray,
    kind: Kind = "auto",
    *,
    ids: Sequence[str] | None = None,
    exact_max: int = 100_000,
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    ef_search: int = DEFAULT_EF_SEARCH,
    seed: int = 0,
) -> VectorIndex:
    """Index M candidate vectors for inner-product search.

    vectors: (M, D) float32, L2-normalised (checked: a row whose norm is not 1 ± 1e-3 is an error).
    kind: "exact" | "ivf" | "hnsw", or "auto": exact when M <= exact_max, else ivf.
    ids: optional (M,) string ids, kept beside the index (`VectorIndex.ids_at`, `save`).
    nlist: IVF lists, default `default_nlist(M)` (≈ 4·sqrt(M)); nprobe: lists scanned per query.
    hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
    seed: k-means seed and training-sample choice (ivf), so that a rebuild gives the same index.
    """
    vectors = _as_unit_rows(vectors, "vectors", None)
    num, dim = vectors.shape
    if num == 0:
        raise ValueError("build_index: no vectors to index")
    if ids is not None:
        ids = [str(i) for i in ids]
        if len(ids) != num:
            raise ValueError(f"build_index: {len(ids)} ids for {num} vectors")
    if kind == "auto":
        kind = "exact" if num <= exact_max else "ivf"

    if kind == "exact":
        index: faiss.Index = faiss.IndexFlatIP(dim)
        params: dict[str, Any] = {}
    elif kind == "ivf":
        lists = default_nlist(num) if nlist is None else max(1, min(int(nlist), num))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        train_size = min(num, _TRAIN_POINTS_PER_LIST * lists)
        sample = np.random.default_rng(seed).choice(num, size=train_size, replace=False) if train_size < num else None
        index.train(vectors if sample is None else vectors[np.sort(sample)])
        params = {"nlist": lists, "nprobe": int(nprobe), "train_size": train_size}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        params = {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    else:
        raise ValueError(f"build_index: unknown kind {kind!r}; use auto, exact, ivf or hnsw")
    index.add(vectors)
    return VectorIndex(index, kind, params, ids)


def _as_unit_rows(array: np.ndarray, name: str, dim: int | None) -> np.ndarray:
    """C-contiguous float32 (N, D), checked to be L2-normalised row by row."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
        expected = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"{name} must be {expected} float32, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= _NORM_TOLERANCE))  # also catches NaN
    if bad.size:
        raise ValueError(
            f"{name} row {int(bad[0])} has L2 norm {float(norms[bad[0]]):.4g} ({bad.size} rows not unit length); "
            "retrieval uses inner product as cosine, so L2-normalise the embeddings first"
        )
    return array
