"""The evaluation pass's rows (`maple.stages.evaluate.embed_splits`): a pairs split and a compositional split put in
one shape, so one Ray Data pass embeds both. Apart from `evaluate` because Ray Data's tasks run these functions in
worker processes that import their module: this one needs no torch (5 s of CPU to import, per worker)."""

from __future__ import annotations

import pyarrow as pa

# The evaluation's rows, both splits in one shape: a pair's texts are its captions; a compositional row's texts are
# its caption and its perturbed caption, and it may carry a perturbed image.
EVAL_ROWS = pa.schema([("split", pa.string()), ("id", pa.string()), ("image", pa.binary()),
                        ("negative_image", pa.binary()), ("texts", pa.list_(pa.string())),
                        ("negative_type", pa.string()), ("held_out", pa.bool_())])


def pairs_as_eval_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table([pa.array(["pairs"] * n), batch["id"], batch["image"], pa.nulls(n, pa.binary()),
                     batch["captions"], pa.array([""] * n), pa.array([False] * n)], schema=EVAL_ROWS)


def compositional_as_eval_rows(batch: pa.Table) -> pa.Table:
    texts = [list(pair) for pair in zip(batch["caption"].to_pylist(), batch["negative_caption"].to_pylist())]
    return pa.table([pa.array(["compositional"] * batch.num_rows), batch["id"], batch["image"],
                     batch["negative_image"], pa.array(texts, pa.list_(pa.string())), batch["negative_type"],
                     batch["held_out"]], schema=EVAL_ROWS)
