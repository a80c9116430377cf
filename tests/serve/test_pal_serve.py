"""The trained PAL aligner served through the maple Serve app's OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

import base64
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
from openai import OpenAI

from maple.data.images import decode_image
from maple.models.families import load_embedder

TEXTS = ["a small red circle", "a large blue square left of a small green triangle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(ray_local, trained_aligner):
    from ray import serve

    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"embedder": str(trained_aligner)}), name="maple-pal", route_prefix="/")
    yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    serve.shutdown()


def test_served_aligner_gives_the_aligners_text_and_image_embeddings(client, trained_aligner, pal_splits):
    aligner = load_embedder(trained_aligner)
    png = pq.read_table(pal_splits / "val" / "part-00000.parquet", columns=["image"]).slice(0, 1).to_pylist()[0]
    url = "data:image/png;base64," + base64.b64encode(png["image"]).decode()
    response = client.embeddings.create(model=client.models.list().data[0].id, input=[TEXTS[0], TEXTS[1],
                                                                                       {"image": url}])
    got = np.array([d.embedding for d in response.data])
    assert got.shape == (3, aligner.embedding_dim)
    np.testing.assert_allclose(got[:2], aligner.encode_texts(TEXTS).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[2], aligner.encode_images([decode_image(png["image"])]).numpy()[0], atol=1e-5)
