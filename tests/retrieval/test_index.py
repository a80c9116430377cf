"""The faiss-backed vector index: exact equals brute force, ANN recall on clustered data, save/load round trip."""

import numpy as np
import pytest

from maple.retrieval.index import VectorIndex, build_index, default_nlist


def _unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def _random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


@pytest.fixture(scope="module")
def clustered():
    """4,000 points around 40 centres in 32-d, and 200 queries drawn the same way (not in the set)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    points = centres[rng.integers(40, size=4000)] + 0.3 * rng.standard_normal((4000, 32))
    queries = centres[rng.integers(40, size=200)] + 0.3 * rng.standard_normal((200, 32))
    return _unit(points), _unit(queries)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def test_exact_search_equals_numpy_brute_force():
    vectors, queries = _random_unit(500, 16, 1), _random_unit(20, 16, 2)
    scores, indices = build_index(vectors, "exact").search(queries, 10)
    sims = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    expected = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


def test_auto_is_exact_up_to_exact_max_and_ivf_above():
    vectors = _random_unit(400, 8, 3)
    assert build_index(vectors, "auto", exact_max=400).kind == "exact"
    assert build_index(vectors, "auto", exact_max=399).kind == "ivf"


def test_default_nlist_is_four_sqrt_m_with_enough_points_per_list():
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(100_000) == 1265
    assert default_nlist(4_000) == 4000 // 39  # 4·sqrt(4000) = 253 would leave under 39 training points per list
    assert default_nlist(10) == 1


@pytest.mark.parametrize("kind,params", [("ivf", {"nprobe": 8}), ("hnsw", {"ef_search": 64})])
def test_ann_recall_at_10_on_clustered_data(clustered, kind, params):
    points, queries = clustered
    _, truth = build_index(points, "exact").search(queries, 10)
    scores, found = build_index(points, kind, **params).search(queries, 10)
    assert _recall(found, truth) >= 0.9
    # scores are the inner products of the returned vectors (the metric is IP, not L2)
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, points[found]), atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_load_round_trip_gives_identical_results(clustered, tmp_path, kind):
    points, queries = clustered
    ids = [f"img{i}" for i in range(len(points))]
    index = build_index(points, kind, ids=ids, nprobe=4, ef_search=32)
    index.save(tmp_path / "index")
    loaded = VectorIndex.load(tmp_path / "index")
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert (loaded.kind, loaded.params, loaded.ids) == (index.kind, index.params, ids)


def test_ids_at_maps_search_indices_to_ids():
    vectors = _random_unit(5, 4, 4)
    index = build_index(vectors, "exact", ids=["a", "b", "c", "d", "e"])
    _, indices = index.search(vectors[[2]], 1)
    assert index.ids_at(indices) == [["c"]]
    assert index.ids_at(np.array([[-1, 0]])) == [[None, "a"]]


def test_k_larger_than_the_index_returns_every_vector():
    vectors = _random_unit(7, 4, 5)
    scores, indices = build_index(vectors, "exact").search(vectors[:2], 50)
    assert indices.shape == (2, 7) and sorted(indices[0].tolist()) == list(range(7))


def test_more_probes_never_lower_ivf_recall(clustered):
    points, queries = clustered
    _, truth = build_index(points, "exact").search(queries, 10)
    index = build_index(points, "ivf")
    recalls = []
    for nprobe in (1, 4, index.params["nlist"]):
        index.set_search_params(nprobe=nprobe)
        recalls.append(_recall(index.search(queries, 10)[1], truth))
    assert recalls == sorted(recalls) and recalls[-1] == 1.0  # probing every list is exhaustive


def test_unnormalised_vectors_are_rejected_naming_the_row():
    vectors = _random_unit(10, 4, 6)
    vectors[3] *= 2
    with pytest.raises(ValueError, match="vectors row 3 has L2 norm 2"):
        build_index(vectors, "exact")


def test_nan_queries_are_rejected():
    index = build_index(_random_unit(10, 4, 7), "exact")
    queries = _random_unit(2, 4, 8)
    queries[1, 0] = np.nan
    with pytest.raises(ValueError, match="queries row 1"):
        index.search(queries, 3)


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        VectorIndex.load(tmp_path)
