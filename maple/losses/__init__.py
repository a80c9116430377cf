"""Losses as plain functions over tensors (no Ray): InfoNCE, MAPLE's RPA, UniME-V2's soft labels and reranker
losses, and `MapleLoss`, which combines them from `LossConfig`."""

from maple.losses.combined import MapleLoss
from maple.losses.gather import distributed_world, gather_features
from maple.losses.infonce import MAX_LOGIT_SCALE, infonce_loss
from maple.losses.reranker import listwise_slots, reranker_listwise_loss, reranker_pairwise_loss
from maple.losses.rpa import rpa_listwise_loss, rpa_pairwise_loss
from maple.losses.soft_label import soft_label_kl_loss

__all__ = [
    "MAX_LOGIT_SCALE",
    "MapleLoss",
    "distributed_world",
    "gather_features",
    "infonce_loss",
    "listwise_slots",
    "reranker_listwise_loss",
    "reranker_pairwise_loss",
    "rpa_listwise_loss",
    "rpa_pairwise_loss",
    "soft_label_kl_loss",
]
