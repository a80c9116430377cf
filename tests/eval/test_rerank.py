"""Retrieve-then-rerank ordering rules and metrics against explicit-list references."""

from __future__ import annotations

import numpy as np
import pytest

from maple.eval.metrics import recall_at_k
from maple.eval.rerank import (
    best_of_reorder,
    compositional_rerank_report,
    full_reorder,
    rerank_recall,
    rerank_report,
    top_k,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def reference_ranking(sim_row, k, rerank_row, mode, m):
    """The final ranked candidate list of one query, built by explicit list operations."""
    ranked = sorted(range(len(sim_row)), key=lambda j: (-sim_row[j], j))
    head, tail = ranked[:k], ranked[k:]
    if mode == "full":
        head = [head[s] for s in sorted(range(len(head)), key=lambda s: (-rerank_row[s], s))]
    else:
        window = list(range(min(m, len(head))))
        best = max(window, key=lambda s: (rerank_row[s], -s))
        head = [head[best]] + [c for s, c in enumerate(head) if s != best]
    return head + tail


def reference_recall(sim, relevant, k, rerank, ks, mode, m):
    hits = {K: 0 for K in ks}
    for q in range(sim.shape[0]):
        ranked = reference_ranking(sim[q], k, rerank[q], mode, m)
        first = next(r for r, c in enumerate(ranked) if relevant[q, c])
        for K in ks:
            hits[K] += first < K
    return {K: hits[K] / sim.shape[0] for K in ks}


def test_full_reorder_sorts_by_reranker_score_and_keeps_embedder_order_on_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert full_reorder(scores).tolist() == [[1, 3, 2, 0]]


def test_best_of_moves_the_best_of_the_first_m_to_the_top_and_keeps_the_rest_in_order():
    scores = np.array([[0.1, 0.2, 0.8, 0.3, 0.0, 5.0, 9.0]])  # slots 5 and 6 score higher but lie beyond m = 5
    assert best_of_reorder(scores, m=5).tolist() == [[2, 0, 1, 3, 4, 5, 6]]


def test_best_of_ignores_unscored_slots_beyond_m():
    scores = np.array([[0.1, 0.7, 0.2, np.nan, np.nan]])
    assert best_of_reorder(scores, m=3).tolist() == [[1, 0, 2, 3, 4]]


def test_top_k_is_the_stable_descending_order():
    sim = np.array([[0.2, 0.5, 0.5, 0.1]])
    assert top_k(sim, 3).tolist() == [[1, 2, 0]]


@pytest.mark.parametrize("mode", ["full", "best_of"])
def test_rerank_recall_matches_explicit_list_reference(mode):
    rng = _rng(1)
    q, c, k, m, ks = 12, 15, 6, 3, [1, 2, 5, 10]
    sim = rng.normal(size=(q, c))
    relevant = np.zeros((q, c), dtype=bool)
    relevant[np.arange(q), rng.integers(0, c, q)] = True
    relevant[np.arange(q), rng.integers(0, c, q)] = True
    rerank = rng.normal(size=(q, k))
    got = rerank_recall(sim, relevant, top_k(sim, k), rerank, ks, mode, m)
    assert got == pytest.approx(reference_recall(sim, relevant, k, rerank, ks, mode, m))


def _gallery(seed=2, n=10, d=8, noise=1.5):
    """n images with one caption each; caption embeddings are noisy copies, so the embedder makes mistakes."""
    rng = _rng(seed)
    image_emb = rng.normal(size=(n, d))
    text_emb = image_emb + noise * rng.normal(size=(n, d))
    images = [f"image-{i}" for i in range(n)]  # stand-ins: the score functions below read only the names
    captions = [f"caption-{i}" for i in range(n)]
    return images, image_emb, captions, np.arange(n), text_emb


def test_reranking_by_the_embedders_own_similarity_leaves_recall_unchanged():
    images, image_emb, captions, t2i, text_emb = _gallery()
    sim = text_emb @ image_emb.T

    def embedder_score(query, candidates):
        if query.startswith("caption"):
            return [sim[int(query.split("-")[1]), int(c.split("-")[1])] for c in candidates]
        return [sim[int(c.split("-")[1]), int(query.split("-")[1])] for c in candidates]

    report = rerank_report(embedder_score, images, image_emb, captions, t2i, text_emb, [1, 5], top_k_size=5)
    relevant = t2i[:, None] == np.arange(len(images))[None, :]
    base_t2i, base_i2t = recall_at_k(sim, relevant, [1, 5]), recall_at_k(sim.T, relevant.T, [1, 5])
    for mode in ("full", "best_of"):
        assert report[f"rerank_{mode}_t2i_r@1"] == base_t2i[1]
        assert report[f"rerank_{mode}_i2t_r@5"] == base_i2t[5]


def test_an_oracle_reranker_lifts_r_at_1_to_the_top_k_hit_rate():
    images, image_emb, captions, t2i, text_emb = _gallery(noise=2.0)

    def oracle(query, candidates):  # 1 for the true match, 0 otherwise
        return [float(query.split("-")[1] == c.split("-")[1]) for c in candidates]

    report = rerank_report(oracle, images, image_emb, captions, t2i, text_emb, [1, 10], top_k_size=4, m=2)
    sim = text_emb @ image_emb.T
    in_top4 = (np.argsort(-sim, axis=1, kind="stable")[:, :4] == t2i[:, None]).any(1).mean()
    in_top2 = (np.argsort(-sim, axis=1, kind="stable")[:, :2] == t2i[:, None]).any(1).mean()
    assert report["rerank_full_t2i_r@1"] == pytest.approx(in_top4)
    assert report["rerank_best_of_t2i_r@1"] == pytest.approx(in_top2)  # best of the top m = 2 only
    assert report["rerank_t2i_top4_hit"] == pytest.approx(in_top4)
    assert report["rerank_full_t2i_r@10"] == 1.0


def test_compositional_rerank_report_counts_rows_where_the_caption_outscores_the_negative():
    table = {("img0", "cap0"): 0.9, ("img0", "neg0"): 0.1, ("img1", "cap1"): 0.2, ("img1", "neg1"): 0.6,
             ("img2", "cap2"): 0.7, ("img2", "neg2"): 0.3, ("nimg0", "cap0"): 0.1, ("nimg0", "neg0"): 0.8}

    def score(query, candidates):
        return [table[(query, c)] for c in candidates]

    report = compositional_rerank_report(score, ["img0", "img1", "img2"], ["cap0", "cap1", "cap2"],
                                         ["neg0", "neg1", "neg2"], ["nimg0", None, None],
                                         ["swap", "replace", "replace"], np.array([True, False, True]))
    assert report["rerank_comp_all_accuracy"] == pytest.approx(2 / 3)
    assert report["rerank_comp_all_replace_accuracy"] == pytest.approx(1 / 2)
    assert report["rerank_comp_held_out_accuracy"] == pytest.approx(1.0)
    assert report["rerank_comp_all_swap_group"] == 1.0  # text: .9>.1, .8>.1; image: .9>.1, .8>.1


def _embedded_frames(world, embedder):
    """The frames `jobs.evaluate.embed_table` returns for the test and compositional splits (images dropped)."""
    import pyarrow.parquet as pq

    from maple.data.images import decode_image

    test = pq.read_table(world / "test").slice(0, 16).to_pandas()
    test["image_emb"] = list(embedder.encode_images([decode_image(b) for b in test["image"]]).numpy())
    test["captions_emb"] = [embedder.encode_texts(list(caps)).numpy() for caps in test["captions"]]
    comp = pq.read_table(world / "compositional").slice(0, 12).to_pandas()
    return test.drop(columns=["image"]), comp.drop(columns=["image", "negative_image"])


def test_evaluate_with_reranker_a_fresh_cross_encoder_keeps_its_embedders_recall(small_world, tmp_path):
    """A fresh cross-encoder over an embedder scores sim_scale · cos: reranking in either mode changes no recall, and
    its compositional accuracy is the embedder's."""
    import pyarrow.parquet as pq

    from maple.data.images import decode_image
    from maple.eval.report import retrieval_report
    from maple.models.config import ModelConfig, RerankerConfig
    from maple.models.families import build_embedder, build_reranker
    from maple.stages.evaluate import evaluate_with_reranker

    world, _ = small_world
    embedder = build_embedder(ModelConfig(family="clip"), seed=1).eval()
    embedder.save_pretrained(tmp_path / "emb")
    build_reranker(RerankerConfig(name_or_path=str(tmp_path / "emb"))).save_pretrained(tmp_path / "rr")
    test, comp = _embedded_frames(world, embedder)
    report = evaluate_with_reranker(str(tmp_path / "rr"), world, test, comp, [1, 5], top_k_size=5, m=3)
    text_image_ids = [i for i, caps in zip(test["id"], test["captions"]) for _ in caps]
    base = retrieval_report(list(test["id"]), np.stack(test["image_emb"]), text_image_ids,
                            np.concatenate(list(test["captions_emb"])), [1, 5])
    for mode in ("full", "best_of"):
        for key in ("t2i_r@1", "i2t_r@1", "t2i_r@5"):
            assert report[f"rerank_{mode}_{key}"] == pytest.approx(base[key])
    comp_images = pq.read_table(world / "compositional").slice(0, 12).column("image").to_pylist()
    z_img = embedder.encode_images([decode_image(b) for b in comp_images])
    z_cap, z_neg = embedder.encode_texts(list(comp["caption"])), embedder.encode_texts(list(comp["negative_caption"]))
    accuracy = float(((z_img * z_cap).sum(1) > (z_img * z_neg).sum(1)).float().mean())
    assert report["rerank_comp_all_accuracy"] == pytest.approx(accuracy)
