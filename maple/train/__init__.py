"""Training: a step that runs without Ray, GradCache, and one Ray Train + DeepSpeed loop that every recipe reuses.

The layers, innermost first (only `loop.py` imports Ray):

- `maple.train.step.train_step(model, loss_fn, batch, optimizer, gradcache_chunk=None) -> dict[str, float]`
  One optimisation step of an `Embedder` on a collated batch (`maple.train.batch.EmbedderBatch`): embed query,
  positive and hard negatives (`embed_texts` / `embed_images` on pre-tokenised tensors), `MapleLoss`, backward, step.
  `optimizer` is a `torch.optim.Optimizer` or a DeepSpeed engine (anything with `.backward(loss)` and `.step()`);
  `gradcache_chunk=n` embeds in chunks of n rows through `maple.train.gradcache.gradcache_step`. Returns the loss
  terms as floats. Time it, test it, call it in a notebook: no Ray, no torch.distributed needed.
- `maple.train.batch`: Parquet rows (numpy batches as Ray Data's `iter_batches` yields them) to model inputs.
  `collate_pairs(model, rows, epoch, seed)` for PAIRS_SCHEMA rows (the InfoNCE baseline: query = a caption chosen
  deterministically per (row id, epoch, seed), positive = the image); `collate_judged(model, rows)` for the mining
  job's JUDGED_SCHEMA rows; `check_columns(schema, loss_cfg, source)` raises before any worker starts when the loss
  needs judged columns that the input lacks.
- `maple.train.task.TrainTask`: what differs between training flows. A task holds its own config sections and says
  how to build the trainable module and its loss, how to collate rows, how to run one step, how to evaluate on the
  val split (rank 0) and how to export the final weights. The recipes (`maple.recipes.embedder`, `.reranker`,
  `.pal`, `.mate`) subclass it.
- `maple.train.loop.run_training(train, run, task, datasets, run_name, mlflow) -> TrainResult(model_dir,
  mlflow_run_id, registry_uri, metrics)`: the Ray Train V2 `TorchTrainer` around the task. `datasets` maps "train"
  (required, streamed and split across workers) and "val" (optional, read whole on rank 0) to `ray.data.Dataset`s.
  In each worker: `deepspeed.initialize` (ZeRO stage train.zero_stage 0-3, bf16 from train.bf16, gloo on CPU / NCCL
  on GPU) over a module holding model and loss, with a client `torch.optim.AdamW`; per-step MLflow metrics on rank 0
  (each loss term, lr, samples/s, memory) into the MLflow run `mlflow` names; DeepSpeed checkpoints every
  train.checkpoint_every steps through `ray.train.report(..., checkpoint=...)`; resume from
  `ray.train.get_checkpoint()` (FailureConfig(max_failures=train.max_failures)); at the end the task exports the
  weights (ZeRO-3 gathered, LoRA merged) into train.output (default <run.output_dir>/models/<run_name>).

The entrypoints wrap it (`jobs/common.py: train`): `maple.tracking.training_run` opens or reopens the run's one MLflow
run (also across re-submission), and `maple.tracking.register_model` registers the export:

    task = EmbedderTask(cfg.model, cfg.train, cfg.eval, seed=cfg.run.seed)
    target = training_run(cfg.run, task.name, run_name, storage_path(cfg.train, cfg.run), cfg)
    result = run_training(cfg.train, cfg.run, task, datasets, run_name, target)
"""
