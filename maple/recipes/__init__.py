"""Training recipes, one file per training flow (torchtune-style): what each flow trains, on which rows, with which
loss, and how its model is exported. Each is a `maple.train.task.TrainTask` for the one Ray Train + DeepSpeed loop:
`embedder` (MAPLE + UniME-V2), `reranker` (UniME-V2), `pal` (anchor alignment), `mate` (long texts)."""
