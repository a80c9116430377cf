from maple.section import Section


class EvalConfig(Section):
    model: str | None = None  # a checkpoint directory or models:/name/version; None: the tiny untrained twin
    split_dir: str | None = None  # None: <run.output_dir>/world
    recall_ks: list[int] = [1, 5, 10]
    batch_size: int = 64
    rerank_top_k: int = 10
    reranker: str | None = None


class DemoConfig(Section):
    """The main job's ablation (`maple demo`): variants × seeds on the same data and steps."""

    seeds: int = 3
    variants: list[str] = ["infonce", "hard_negatives", "soft_label", "rpa_pairwise", "rpa_listwise", "full"]
    reranker: bool = True  # also report "full + reranker" (retrieve-then-rerank over the full variant)
    baseline_steps: int = 150  # InfoNCE warm-up on plain pairs; its embedder mines, every variant starts from it
    variant_steps: int = 150
    # γ of the soft-label term in the variants that use it. UniME-V2's τ = 0.02 turns the reference judge's coarse
    # scores into near one-hot targets, and at γ = 1 the term (~20) outweighs InfoNCE (~2) tenfold and recall
    # collapses (docs/demo.md); 0.1 keeps it beside InfoNCE.
    kl_weight: float = 0.1
    judge_noise_sweep: list[float] = []  # flip rates of the reference judge for the noise study; empty: none
    serve: bool = False  # end by serving the best variant on 127.0.0.1
