"""The grammar rewriter: exact edits of a caption of the synthetic world (`maple.data.synth`'s grammar).

Each kind changes exactly what it names, on the parsed clauses (the edits here are this module's own: the
evaluation's perturbations, `maple.data.synth.make_negative`, are separate code):

| kind              | edit                                                                   | meaning   |
|-------------------|------------------------------------------------------------------------|-----------|
| swap_attributes   | two mentioned objects exchange their colour (or their size)            | changes   |
| swap_relation     | the two sides of one relation clause exchange places                    | changes   |
| replace_attribute | one object's colour (or size) becomes another of the vocabulary        | changes   |
| replace_object    | one object's shape becomes another                                      | changes   |
| replace_relation  | one clause's relation becomes another                                  | changes   |
| drop_clause       | one clause of several is left out                                       | changes   |
| add_clause        | a clause about an object not mentioned is added                          | changes   |
| reword            | a relation from its other side ("A above B" → "B below A"), or clauses reordered | keeps     |

"Changes" is the rewriter's claim only: a swap of two objects that share the attribute, or a relation replaced by
one that also holds, leaves the caption true; the judge finds that out, which is why it labels every rewrite.
"""

from __future__ import annotations

import random

from maple.data.config import WorldConfig
from maple.data.synth import INVERSE, Clause, CaptionFacts, parse_caption, render_caption
from maple.rewrite.base import Proposals, Rewriter, item_rng
from maple.rewrite.config import RewriteConfig

Triple = tuple[str, str, str]


def _mentions(clauses: list[Clause]) -> list[Triple]:
    return CaptionFacts(clauses).mentions


def _map_triples(clauses: list[Clause], mapping: dict[Triple, Triple]) -> list[Clause]:
    def m(t: Triple | None) -> Triple | None:
        return mapping.get(t, t) if t is not None else None

    return [Clause(m(c.subject), c.relation, m(c.object)) for c in clauses]


def swap_attributes(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    slot = rng.choice([1, 0])  # colour first, size as the other try
    for position in (slot, 1 - slot):
        pairs = [(a, b) for i, a in enumerate(_mentions(clauses)) for b in _mentions(clauses)[i + 1:]
                 if a[position] != b[position]]
        if pairs:
            a, b = rng.choice(pairs)
            new_a = tuple(b[position] if i == position else v for i, v in enumerate(a))
            new_b = tuple(a[position] if i == position else v for i, v in enumerate(b))
            # Objects that differ in this slot only would just trade names (a relation swap in disguise), and a
            # new triple equal to another mention would merge two objects: neither is an attribute swap.
            if new_a == b or {new_a, new_b} & (set(_mentions(clauses)) - {a, b}):
                continue
            return _map_triples(clauses, {a: new_a, b: new_b})
    return None


def swap_relation(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    relational = [i for i, c in enumerate(clauses) if c.relation]
    if not relational:
        return None
    i = rng.choice(relational)
    out = list(clauses)
    out[i] = Clause(clauses[i].object, clauses[i].relation, clauses[i].subject)
    return out


def _replace_slot(clauses: list[Clause], rng: random.Random, position: int, values: list[str]) -> list[Clause] | None:
    mentioned = _mentions(clauses)
    target = rng.choice(mentioned)
    options = [v for v in values if v != target[position]
               and tuple(v if i == position else x for i, x in enumerate(target)) not in mentioned]
    if not options:
        return None
    value = rng.choice(options)
    return _map_triples(clauses, {target: tuple(value if i == position else x for i, x in enumerate(target))})


def replace_attribute(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    if rng.random() < 0.5:
        return _replace_slot(clauses, rng, 1, world.colours) or _replace_slot(clauses, rng, 0, world.sizes)
    return _replace_slot(clauses, rng, 0, world.sizes) or _replace_slot(clauses, rng, 1, world.colours)


def replace_object(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    return _replace_slot(clauses, rng, 2, world.shapes)


def replace_relation(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    relational = [i for i, c in enumerate(clauses) if c.relation]
    if not relational:
        return None
    i = rng.choice(relational)
    others = [r for r in world.relations if r != clauses[i].relation]
    out = list(clauses)
    out[i] = Clause(clauses[i].subject, rng.choice(others), clauses[i].object)
    return out


def drop_clause(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    if len(clauses) < 2:
        return None
    i = rng.randrange(len(clauses))
    return clauses[:i] + clauses[i + 1:]


def add_clause(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    mentioned = set(_mentions(clauses))
    new = (rng.choice(world.sizes), rng.choice(world.colours), rng.choice(world.shapes))
    if new in mentioned:
        return None
    if rng.random() < 0.5:
        return clauses + [Clause(new)]
    return clauses + [Clause(new, rng.choice(world.relations), rng.choice(sorted(mentioned)))]


def reword(clauses: list[Clause], rng: random.Random, world: WorldConfig) -> list[Clause] | None:
    relational = [i for i, c in enumerate(clauses) if c.relation in INVERSE]
    if relational and (len(clauses) < 2 or rng.random() < 0.6):
        i = rng.choice(relational)
        out = list(clauses)
        out[i] = Clause(clauses[i].object, INVERSE[clauses[i].relation], clauses[i].subject)
        return out
    if len(clauses) >= 2:
        order = list(range(len(clauses)))
        while order == sorted(order):
            rng.shuffle(order)
        return [clauses[i] for i in order]
    return None


EDITS = {"swap_attributes": swap_attributes, "swap_relation": swap_relation, "replace_attribute": replace_attribute,
         "replace_object": replace_object, "replace_relation": replace_relation, "drop_clause": drop_clause,
         "add_clause": add_clause, "reword": reword}


class GrammarRewriter(Rewriter):
    """`rewrite.per_query` rewrites per caption, the configured kinds in a random order (by (seed, id)), each kind
    tried in turn until enough distinct rewrites are made. A kind that does not apply to a caption (no relation to
    swap, one clause to drop) is skipped; a caption outside the grammar is one reject."""

    name = "grammar"

    def __init__(self, cfg: RewriteConfig, world: WorldConfig | None = None):
        unknown = [k for k in cfg.kinds if k not in EDITS]
        if unknown:
            raise ValueError(f"rewrite.kinds: {unknown} are not kinds of the grammar rewriter; known: {sorted(EDITS)}")
        self.cfg, self.world = cfg, world or WorldConfig()

    def rewrite(self, items: list[tuple[str, str]]) -> list[Proposals]:
        return [self._one(item_id, caption) for item_id, caption in items]

    def _one(self, item_id: str, caption: str) -> Proposals:
        out = Proposals()
        try:
            clauses = parse_caption(caption, self.world.relations).clauses
        except ValueError as exc:
            out.rejects.append(("caption_outside_grammar", f"{caption}: {exc}"))
            return out
        rng = item_rng(self.cfg.seed, item_id)
        kinds = list(self.cfg.kinds)
        rng.shuffle(kinds)
        for _ in range(3):  # a few passes: some kinds give a different rewrite on a second draw
            for kind in kinds:
                if len(out.rewrites) >= self.cfg.per_query:
                    return out
                edited = EDITS[kind](clauses, rng, self.world)
                if edited is not None:
                    text = render_caption(edited)
                    if text != caption and all(r.text != text for r in out.rewrites):
                        out.add(text, kind, caption)
        return out
