"""PAL: relative representations against learnable anchors, pooled per anchor, aligned by InfoNCE.

"Learning Relative Representations for Fine-Grained Multimodal Alignment with Limited Data" (arXiv 2605.16834; no
public code; ARCHITECTURE.md "The two recipes"). Two frozen encoders give token features; each modality owns K anchors.

| function                  | inputs                                              | output     |
|---------------------------|-----------------------------------------------------|------------|
| `relative_representation` | tokens (B, n, d), anchors (K, d)                    | (B, n, K)  |
| `anchor_pool`             | relative (B, n, K), mask (B, n), τ_p                 | (B, K)     |
| `anchor_embedding`        | tokens, mask, anchors, τ_p                          | (B, K) L2  |
| `pal_loss`                | image (B, K), text (B, K), τ                        | scalar     |

Related: `maple.losses.infonce.infonce_loss` (the contrastive loss PAL reuses with a fixed temperature).

    img = anchor_embedding(patch_tokens, patch_mask, image_anchors, tau_pool=0.03)
    txt = anchor_embedding(token_states, attention_mask, text_anchors, tau_pool=0.03)
    loss = pal_loss(img, txt, tau=0.07)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maple.losses.infonce import infonce_loss

TAU_POOL = 0.03  # the paper's pooling temperature τ_p
TAU = 0.07  # the paper's InfoNCE temperature τ


def relative_representation(tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Cosine of every token to every anchor: r[b, i, k] = cos(x_{b,i}, a_k).

    tokens: (B, n, d); anchors: (K, d). Returns (B, n, K), values in [-1, 1].
    """
    if tokens.ndim != 3 or anchors.ndim != 2 or tokens.shape[-1] != anchors.shape[-1]:
        raise ValueError(f"relative_representation: tokens must be (B, n, d) and anchors (K, d) with the same d; "
                         f"got {tuple(tokens.shape)} and {tuple(anchors.shape)}")
    return F.normalize(tokens, dim=-1) @ F.normalize(anchors, dim=-1).T


def anchor_pool(relative: torch.Tensor, mask: torch.Tensor | None, tau_pool: float = TAU_POOL) -> torch.Tensor:
    """Per-anchor softmax pooling over tokens (PAL's pooling), padding excluded.

    For anchor k: w_{i,k} = softmax_i(r_{i,k} / τ_p) over the real tokens i; p_k = Σ_i w_{i,k} · r_{i,k}: a soft
    maximum of the tokens' cosines to anchor k, so an anchor "fires" when any token is close to it.
    relative: (B, n, K); mask: (B, n), nonzero where the token is real (None: all real). Returns (B, K), not
    normalised. A row with no real token is an error.
    """
    if mask is None:
        mask = torch.ones(relative.shape[:2], dtype=torch.bool, device=relative.device)
    mask = mask.bool()
    if mask.shape != relative.shape[:2]:
        raise ValueError(f"anchor_pool: mask {tuple(mask.shape)} does not match relative {tuple(relative.shape)}")
    if not mask.any(dim=1).all():
        raise ValueError(f"anchor_pool: rows {torch.nonzero(~mask.any(dim=1)).flatten().tolist()} have no real token")
    logits = (relative / tau_pool).masked_fill(~mask[..., None], float("-inf"))
    weights = torch.softmax(logits, dim=1)  # over tokens, per anchor
    return (weights * relative.masked_fill(~mask[..., None], 0.0)).sum(dim=1)


def anchor_embedding(tokens: torch.Tensor, mask: torch.Tensor | None, anchors: torch.Tensor,
                     tau_pool: float = TAU_POOL) -> torch.Tensor:
    """A sample's PAL vector: pooled relative representation, L2-normalised. tokens (B, n, d) -> (B, K)."""
    return F.normalize(anchor_pool(relative_representation(tokens, anchors), mask, tau_pool), dim=-1)


def pal_loss(image: torch.Tensor, text: torch.Tensor, tau: float = TAU, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE between the image and text K-vectors at a fixed temperature τ (PAL trains no temperature).

    image, text: (B, K), row i of each a pair. gather=True: negatives from every rank (torch.distributed).
    """
    scale = torch.tensor(1.0 / tau, dtype=image.dtype, device=image.device)
    return infonce_loss(image, text, scale, gather=gather)
