"""Zero-shot segmentation by relative representations, and mIoU: plain functions over tensors/arrays, no Ray.

PAL (arXiv 2605.16834, ARCHITECTURE.md): each image patch is described by its own relative representation (cosines to
the K image anchors, L2-normalised); a class is described by its prompt's pooled text K-vector. A patch's class scores
are the cosines between the two; the coarse score map is upsampled bilinearly to the image and each pixel takes the
best class. Background is a class of its own (a background prompt), class 0.

mIoU (as in semantic segmentation benchmarks): IoU_c = TP_c / (TP_c + FP_c + FN_c) accumulated over the whole
evaluation set; mean over the classes that occur in the ground truth or the prediction (others are undefined).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from maple.data.synth import Scene


def patch_class_scores(patch_vectors: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    """Cosine of each patch's K-vector to each class's K-vector.

    patch_vectors: (B, h, w, K); class_vectors: (C, K). Both are normalised here. Returns (B, h, w, C).
    """
    if patch_vectors.shape[-1] != class_vectors.shape[-1]:
        raise ValueError(f"patch vectors are {patch_vectors.shape[-1]}-d but class vectors {class_vectors.shape[-1]}-d")
    return F.normalize(patch_vectors.float(), dim=-1) @ F.normalize(class_vectors.float(), dim=-1).T


def segment(patch_vectors: torch.Tensor, class_vectors: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Predicted class per pixel: patch scores (B, h, w, C) upsampled bilinearly to `size`, argmax over classes.

    Returns (B, H, W) int64 class indices (index into class_vectors).
    """
    scores = patch_class_scores(patch_vectors, class_vectors).permute(0, 3, 1, 2)  # (B, C, h, w)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


def class_mask(scene: Scene, object_mask: np.ndarray, classes: list[str], attribute: str = "shape") -> np.ndarray:
    """Ground-truth class map from the world's object-index mask (0 background, i+1 for scene.objects[i]).

    classes: class names with the background at index 0; an object's class is its `attribute` ("shape" or "colour").
    Returns (H, W) int64.
    """
    out = np.zeros(object_mask.shape, dtype=np.int64)
    for i, obj in enumerate(scene.objects):
        name = getattr(obj, attribute)
        if name not in classes:
            raise ValueError(f"object {i} has {attribute} {name!r}, not among the classes {classes}")
        out[object_mask == i + 1] = classes.index(name)
    return out


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; pred and target any equal shapes of ints."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in size")
    return np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """(C,) IoU_c = TP / (TP + FP + FN); NaN for a class absent from both prediction and ground truth."""
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes that occur (see `iou_per_class`)."""
    return float(np.nanmean(iou_per_class(confusion)))
