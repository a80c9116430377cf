"""jobs/index.py: the corpus embedded by the served embedder, indexed, with ids, payloads and contents beside it;
undecodable rows quarantined, not indexed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from maple.data.images import decode_image
from maple.models.families import load_embedder
from maple.serving.search_index import SearchIndex
from tests.fixtures.serve import REGISTERED_NAME


def corpus_rows(corpus) -> list[dict]:
    return [r for path in sorted(corpus.glob("*.parquet")) for r in pq.read_table(path).to_pylist()]


def test_every_decodable_row_is_indexed_once_and_the_broken_one_is_quarantined(built_index, corpus):
    index = SearchIndex.load(built_index["path"])
    good = [r["id"] for r in corpus_rows(corpus) if r["id"] != "broken-0"]
    assert sorted(index.index.ids) == sorted(good) and built_index["size"] == len(good)
    quarantine = pq.read_table(f"{built_index['path']}/quarantine/index.parquet").to_pylist()
    assert [(q["id"], q["stage"], q["reason"]) for q in quarantine] == [("broken-0", "index", "corrupt")]


def test_manifest_names_the_embedder_that_built_the_index(built_index):
    manifest = SearchIndex.load(built_index["path"]).manifest
    assert (manifest["embedder_id"], manifest["embedder_version"]) == (REGISTERED_NAME, "1")
    assert manifest["modality"] == "image" and manifest["quarantined"] == 1


def test_indexed_vectors_are_the_embedders_image_embeddings(built_index, corpus, embedder_dir):
    index = SearchIndex.load(built_index["path"])
    rows = {r["id"]: r for r in corpus_rows(corpus)}
    ids = index.index.ids[:5]
    reference = load_embedder(embedder_dir).encode_images([decode_image(rows[i]["image"]) for i in ids]).numpy()
    stored = np.stack([index.index.index.reconstruct(k) for k in range(5)])
    np.testing.assert_allclose(stored, reference, atol=1e-5)


def test_payloads_carry_the_rows_captions_and_contents_the_image_bytes(built_index, corpus):
    index = SearchIndex.load(built_index["path"])
    rows = {r["id"]: r for r in corpus_rows(corpus)}
    first = index.index.ids[0]
    assert index.payloads[0]["captions"] == rows[first]["captions"]
    assert index.documents.column("image")[0].as_py() == rows[first]["image"]
    assert "image" not in index.payloads[0] and json.dumps(index.payloads[0])


def test_text_modality_indexes_every_caption_under_its_pair(ray_local, embedder_dir, corpus, tmp_path):
    from jobs.index import main

    manifest = main([f"run.output_dir={tmp_path}", f"serve.embedder={embedder_dir}", f"serve.corpus={corpus}",
                     f"serve.index={tmp_path / 'index'}", "serve.corpus_modality=text", "serve.index_kind=exact"])
    index = SearchIndex.load(manifest["path"])
    rows = [r for r in corpus_rows(corpus)]
    expected = {f"{r['id']}#{k}": caption for r in rows for k, caption in enumerate(r["captions"])}
    assert sorted(index.index.ids) == sorted(expected) and manifest["quarantined"] == 0
    position = index.index.ids.index(next(iter(expected)))
    hit = index.search(index.index.index.reconstruct(position), 1, with_content=True)[0]
    assert hit["content"] == expected[hit["id"]] and hit["payload"]["pair_id"] == hit["id"].split("#")[0]
    reference = load_embedder(embedder_dir).encode_texts([expected[index.index.ids[0]]]).numpy()[0]
    np.testing.assert_allclose(index.index.index.reconstruct(0), reference, atol=1e-5)
