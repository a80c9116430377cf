"""The one rewriter interface: `Rewriter.rewrite(items) -> list[Proposals]`, one per (query id, caption).

A rewrite is a caption and the kind of change it claims (`maple.rewrite.config.KINDS`). What a backend could not turn
into a rewrite (an unparseable line of an LLM's answer, a kind that does not apply) comes back as a reject with the
reason, for the mining job's quarantine: nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rewrite:
    text: str
    kind: str


@dataclass
class Proposals:
    """What the rewriter proposes for one caption: rewrites (distinct, none equal to the caption) and rejects
    (reason, the offending raw text)."""

    rewrites: list[Rewrite] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)

    def add(self, text: str, kind: str, original: str) -> None:
        """Keep a rewrite unless it is empty, the caption itself, or a repeat (each reject keeps its reason)."""
        text = " ".join(text.split())
        if not text:
            self.rejects.append(("empty_rewrite", text))
        elif text.lower().rstrip(".") == original.lower().rstrip("."):
            self.rejects.append(("same_as_caption", text))
        elif any(r.text == text for r in self.rewrites):
            self.rejects.append(("duplicate_rewrite", text))
        else:
            self.rewrites.append(Rewrite(text, kind))


class Rewriter(ABC):
    """Proposes rewrites of captions. Subclasses load their model (if any) in `__init__`, once per actor."""

    name: str = ""

    @abstractmethod
    def rewrite(self, items: list[tuple[str, str]]) -> list[Proposals]:
        """items: (query id, caption) pairs -> one `Proposals` per item, in order; deterministic in (seed, id)."""


def item_rng(seed: int, item_id: str) -> random.Random:
    """A generator that depends only on (seed, id): proposals do not change with batching or re-runs."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))
