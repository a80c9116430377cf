"""A trained reranker in the MLflow model registry, beside the embedders (`maple.tracking.register_embedder`).

The saved reranker directory travels as the pyfunc's artifact `reranker`; `load_reranker("models:/name/version")`
fetches it through `maple.tracking.model_dir` and loads it with maple's own loader.
"""

from __future__ import annotations

from pathlib import Path

import mlflow


class RerankerModel(mlflow.pyfunc.PythonModel):
    """`predict({"query": [...], "candidate": [...]})` (texts) returns logit_Yes − logit_No per row."""

    def load_context(self, context) -> None:
        from maple.rerank.model import load_reranker

        self.reranker = load_reranker(context.artifacts["reranker"])

    def predict(self, context, model_input, params=None):
        queries, candidates = list(model_input["query"]), list(model_input["candidate"])
        return [self.reranker.score(str(q), [str(c)])[0] for q, c in zip(queries, candidates)]


def register_reranker(model_dir: str | Path, name: str) -> str:
    """Log a saved reranker directory in the active run and register it; returns `models:/<name>/<version>`."""
    from maple.tracking import register_model

    return register_model(model_dir, name, RerankerModel(), "reranker")

