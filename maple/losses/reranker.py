"""Reranker losses: UniME-V2 (arXiv 2510.13515), a reranker trained pairwise and listwise.

Pairwise: the reranker answers "Yes" for (q, c+) and "No" for (q, hardest negative):
    L_pair = CE([Yes, No] | q, c+ ; target Yes) + CE([Yes, No] | q, c_hard ; target No)     (each the batch mean)
Listwise: the positive is hidden among x negatives at a random slot, and the reranker names its slot "(k)":
    L_list = CE(slot logits ; target = the positive's slot)

| input       | shape      | meaning                                                                     |
|-------------|------------|-----------------------------------------------------------------------------|
| logits_pos  | (N, 2)     | [Yes, No] logits (or scores) for each query with its positive               |
| logits_neg  | (N, 2)     | [Yes, No] logits for each query with its hardest negative (caller's pick: top judge score) |
| list_logits | (N, x+1)   | one logit per slot of the listwise prompt                                   |
| target      | (N,) long  | the slot of the positive, from `listwise_slots`                             |

Related: `infonce_loss` (the embedder's loss, whose hard negatives the reranker sees).

    slots = listwise_slots(8, generator, num_queries=len(batch))
    loss = reranker_pairwise_loss(yes_no_pos, yes_no_neg) + reranker_listwise_loss(slot_logits, slots)
"""

import torch
import torch.nn.functional as F

YES, NO = 0, 1  # column order of the [Yes, No] logits


def reranker_pairwise_loss(logits_pos: torch.Tensor, logits_neg: torch.Tensor) -> torch.Tensor:
    """CE(Yes | q, c+) + CE(No | q, hardest negative), each averaged over the N queries; a scalar."""
    if logits_pos.ndim != 2 or logits_pos.shape[1] != 2 or logits_neg.shape != logits_pos.shape:
        raise ValueError(
            f"reranker_pairwise_loss: logits_pos and logits_neg must both be (N, 2) [Yes, No]; "
            f"got {tuple(logits_pos.shape)} and {tuple(logits_neg.shape)}"
        )
    n = logits_pos.shape[0]
    yes = torch.full((n,), YES, dtype=torch.long, device=logits_pos.device)
    no = torch.full((n,), NO, dtype=torch.long, device=logits_neg.device)
    return F.cross_entropy(logits_pos, yes) + F.cross_entropy(logits_neg, no)


def reranker_listwise_loss(list_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE over the x+1 slots with the positive's slot as the label, averaged over the N queries; a scalar."""
    if list_logits.ndim != 2 or target.shape != list_logits.shape[:1]:
        raise ValueError(
            f"reranker_listwise_loss: list_logits must be (N, x+1) and target (N,); "
            f"got {tuple(list_logits.shape)} and {tuple(target.shape)}"
        )
    return F.cross_entropy(list_logits, target.long())


def listwise_slots(
    num_negatives: int, generator: torch.Generator | None = None, *, num_queries: int = 1
) -> torch.Tensor:
    """The positive's slot for each listwise prompt, uniform over all x+1 slots: (num_queries,) long in [0, x].

    UniME-V2's released code never puts the positive in the last slot, which lets a reranker learn "never the last
    one"; here every slot, the last included, has probability 1/(x+1).
    """
    if num_negatives < 1:
        raise ValueError(f"listwise_slots: num_negatives must be ≥ 1 (got {num_negatives}); the list needs a negative")
    return torch.randint(0, num_negatives + 1, (num_queries,), generator=generator)
