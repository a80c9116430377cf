"""Zero-shot classification and segmentation on the synthetic world, for any head with the PAL interface.

Classes come from the world's vocabulary (default: shapes; `attribute="colour"` for colours), one prompt each
("a circle"), plus a background prompt for segmentation. A head (`AnchorHead`, `LinearProjectionHead`) maps frozen
token features to embeddings (`embed_image_tokens`, `embed_text_tokens`) and patches to vectors (`patch_vectors`).

- Zero-shot classification accuracy: an image counts as correct when its best-scoring class is one of the classes
  present in it (images hold 1-3 objects).
- Zero-shot segmentation: `maple.eval.segmentation`; mIoU against `render_scene`'s object masks mapped to classes.
"""

from __future__ import annotations

import numpy as np
import torch

from maple.data.synth import Scene, render_scene
from maple.eval.segmentation import class_mask, confusion_matrix, iou_per_class, segment

BACKGROUND_PROMPT = "an empty dark background"


def class_prompts(classes: list[str], template: str = "a {}") -> list[str]:
    return [template.format(c) for c in classes]


def zero_shot_accuracy(image_vectors: torch.Tensor, class_vectors: torch.Tensor, present: list[set[int]]) -> float:
    """Fraction of images whose best class (cosine, image_vectors (N, D) vs class_vectors (C, D)) is present in them.

    present: for each image, the set of class indices it contains.
    """
    best = (image_vectors.float() @ class_vectors.float().T).argmax(dim=1).tolist()
    return float(np.mean([b in p for b, p in zip(best, present)]))


def zero_shot_metrics(head, image_tokens: torch.Tensor, prompt_tokens: list[torch.Tensor], scenes: list[Scene],
                      classes: list[str], image_size: int, attribute: str = "shape") -> dict[str, float]:
    """Classification accuracy and segmentation mIoU of a head on cached features.

    image_tokens: (N, n, d_x) patch tokens of N images rendered at `image_size`; prompt_tokens: C+1 arrays (m_c, d_y)
    of the background prompt (first) and each class prompt's real-token features; scenes: the N images' scenes;
    classes: the C class names. Returns {"zs_accuracy", "miou", "iou_<class>" for background and each class}.
    """
    names = ["background", *classes]
    with torch.no_grad():
        class_vectors = torch.cat([head.embed_text_tokens(t[None].float()) for t in prompt_tokens])
        image_vectors = head.embed_image_tokens(image_tokens.float())
        present = [{classes.index(getattr(o, attribute)) for o in s.objects} for s in scenes]
        accuracy = zero_shot_accuracy(image_vectors, class_vectors[1:], present)
        side = int(round(image_tokens.shape[1] ** 0.5))
        confusion = np.zeros((len(names), len(names)), dtype=np.int64)
        for b in range(0, len(scenes), 64):
            patches = head.patch_vectors(image_tokens[b:b + 64].float())
            pred = segment(patches.reshape(len(patches), side, side, -1), class_vectors, image_size).numpy()
            for p, scene in zip(pred, scenes[b:b + 64]):
                target = class_mask(scene, render_scene(scene, image_size)[1], names, attribute)
                confusion += confusion_matrix(p, target, len(names))
    ious = iou_per_class(confusion)
    out = {"zs_accuracy": accuracy, "miou": float(np.nanmean(ious))}
    out.update({f"iou_{n}": float(v) for n, v in zip(names, ious)})
    return out
