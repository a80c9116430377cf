"""Training: a step that runs without Ray, GradCache, and one Ray Train + DeepSpeed wrapper that every recipe reuses.

The layers, innermost first (only `loop.py` imports Ray):

- `maple.train.step.train_step(model, loss_fn, batch, optimizer, gradcache_chunk=None) -> dict[str, float]`
  One optimisation step of an `Embedder` on a collated batch (`maple.train.data.EmbedderBatch`): embed query,
  positive and hard negatives (`embed_texts` / `embed_images` on pre-tokenised tensors), `MapleLoss`, backward, step.
  `optimizer` is a `torch.optim.Optimizer` or a DeepSpeed engine (anything with `.backward(loss)` and `.step()`);
  `gradcache_chunk=n` embeds in chunks of n rows through `maple.train.gradcache.gradcache_step`. Returns the loss
  terms as floats. Time it, test it, call it in a notebook: no Ray, no torch.distributed needed.
- `maple.train.data`: Parquet rows (numpy batches as Ray Data's `iter_batches` yields them) to model inputs.
  `collate_pairs(model, rows, epoch, seed)` for PAIRS_SCHEMA rows (the InfoNCE baseline: query = a caption chosen
  deterministically per (row id, epoch, seed), positive = the image); `collate_judged(model, rows)` for the mining
  job's JUDGED_SCHEMA rows (t2i and i2t rows may share a batch); `check_columns(schema, loss_cfg, source)` raises
  before any worker starts when the loss needs judged columns that the input lacks.
- `maple.train.tasks.TrainTask`: what differs between recipes. A task says how to build the trainable module and its
  loss, how to collate rows, how to run one step, how to evaluate on the val split (rank 0) and how to export the
  final weights. `EmbedderTask` is the embedder's (dual encoders, MLLM + LoRA/DoRA). A new recipe (reranker, PAL,
  MATE) subclasses `TrainTask` and overrides what it needs:

      class TrainTask:
          name: str                                                      # MLflow tag maple.job, registry name part
          def check(self, cfg, schemas: dict[str, pa.Schema]) -> None    # driver, before any worker: raise ValueError
          def build(self, cfg, seed) -> tuple[nn.Module, nn.Module]      # (model, loss_fn); loss params train too
          def trainable_parameters(self, model, loss_fn) -> list[nn.Parameter]
          def collate(self, model, rows: dict[str, np.ndarray], epoch, cfg) -> Any     # one worker's micro-batch
          def step(self, model, loss_fn, batch, optimizer, cfg) -> dict[str, float]    # usually a train_step
          def evaluate(self, model, val_rows: dict[str, np.ndarray], cfg) -> dict[str, float]   # rank 0 only
          def export(self, model, out_dir: Path, cfg) -> None                          # e.g. save_pretrained
          def register(self, out_dir: Path, name: str) -> str                          # MLflow registry URI

- `maple.train.loop.run_training(cfg, task, datasets, run_name) -> TrainResult(model_dir, mlflow_run_id,
  registry_uri, metrics)`: the Ray Train V2 `TorchTrainer` around the task. `datasets` maps "train" (required,
  streamed and split across workers) and "val" (optional, read whole on rank 0) to `ray.data.Dataset`s. In each
  worker: `deepspeed.initialize` (ZeRO stage train.zero_stage 0-3, bf16 from train.bf16, gloo on CPU / NCCL on GPU)
  over a module holding model and loss, with a client `torch.optim.AdamW`; per-step MLflow metrics on rank 0 (each
  loss term, lr, samples/s, memory) into ONE MLflow run per run_name, also across worker restarts and re-submission
  (its id is kept in the storage folder and in every checkpoint); DeepSpeed checkpoints every
  train.checkpoint_every steps through `ray.train.report(..., checkpoint=...)`; resume from `ray.train.get_checkpoint()`
  (FailureConfig(max_failures=train.max_failures)); at the end the task exports the weights (ZeRO-3 gathered, LoRA
  merged) into train.output (default <run.output_dir>/models/<run_name>) and registers them in the MLflow registry.

Recipe usage (a job module stays a dozen lines):

    cfg = parse_config(argv, __doc__); init_ray(cfg)
    datasets = {"train": ray.data.read_parquet(train_path), "val": ray.data.read_parquet(val_path)}
    result = run_training(cfg, EmbedderTask(), datasets, run_name=cfg.run.name)
    print(result.model_dir, result.registry_uri)
"""
