from typing import Literal

from maple.section import Section


class EvalConfig(Section):
    model: str | None = None  # a checkpoint directory or models:/name/version; None: the tiny untrained twin
    split_dir: str | None = None  # None: <run.output_dir>/world
    # "test": the test pairs and the compositional test (report them once); "val": the val pairs and the
    # compositional validation split (tune on these)
    split: Literal["test", "val"] = "test"
    recall_ks: list[int] = [1, 5, 10]
    batch_size: int = 64
    rerank_top_k: int = 10
    reranker: str | None = None
