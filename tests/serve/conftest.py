"""The Serve application that the tests of this folder share (test_search_page.py, test_serve_app.py): started
once for the folder (package scope: it gives Ray back its CPUs before the next folder's tests run), on 127.0.0.1,
with the embedder from the MLflow registry, the reranker from a checkpoint directory, an image index and a caption
index from jobs/index.py, and bearer auth on."""

from __future__ import annotations

import os
import socket

import pytest

from tests.fixtures.serve import KEY, LIMITS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def server(ray_local, registered_embedder, reranker_dir, built_index, built_caption_index, mlflow_uri):
    """The base URL. Modules of this folder that start a Serve application of their own (test_pal_serve.py) run
    before the first test that asks for this one (file order), and stop theirs when they end."""
    from ray import serve

    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        previous = os.environ.get("MAPLE_API_KEY")
        os.environ["MAPLE_API_KEY"] = KEY  # read where the application is built
        try:
            app = build_app(dict(LIMITS, embedder=registered_embedder, reranker=str(reranker_dir),
                                 index=[built_index["path"], built_caption_index["path"]],
                                 mlflow_tracking_uri=mlflow_uri))
        finally:
            os.environ.pop("MAPLE_API_KEY") if previous is None else os.environ.update(MAPLE_API_KEY=previous)
        serve.run(app, name="maple", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
