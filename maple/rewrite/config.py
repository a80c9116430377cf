from typing import Literal

from maple.section import Section

# What each kind claims to change (a claim the judge checks; the rewriter is never trusted to label).
MEANING_CHANGING = ("swap_attributes", "swap_relation", "replace_attribute", "replace_object", "replace_relation",
                    "drop_clause", "add_clause")
MEANING_KEEPING = ("reword",)
KINDS = MEANING_CHANGING + MEANING_KEEPING


class RewriteConfig(Section):
    """The rewriter that proposes candidate captions for image→text queries (`maple.rewrite`)."""

    backend: Literal["none", "grammar", "hf", "vllm"] = "none"
    per_query: int = 8  # rewrites proposed per query (the kinds in turn, then again)
    kinds: list[str] = list(KINDS)
    seed: int = 0  # rewrites are a function of (seed, query id): re-runs and batching do not change them
    # LLM backends (hf, vllm): a local path (or a name in the Hugging Face cache) of a text LLM
    model: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.7
    batch_size: int = 16  # captions per generate call
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_model_len: int = 2048  # vllm
    enforce_eager: bool = False  # vllm
