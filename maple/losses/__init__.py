"""Losses as plain functions over tensors (no Ray): InfoNCE (`infonce`), MAPLE's RPA (`rpa`), UniME-V2's soft labels
(`soft_label`), reranker losses (`reranker`), and `combined.MapleLoss`, which combines them from `config.LossConfig`.

Nothing is re-exported here, as in maple's other packages: `maple.config` reads `maple.losses.config`, and every
process that only parses a recipe (the CLI, Ray Data's drivers) would otherwise import torch for it."""
