"""The synthetic world: rendered scenes of 1–3 shapes, captions from a small grammar, and exact ground truth.

A scene places objects (shape, colour, size) in distinct cells of a 3×3 grid; relations ("left of", "above", ...)
follow from the cells. A caption is clauses joined by " and ", each `a <size> <colour> <shape>` optionally followed
by `<relation> a <size> <colour> <shape>`. Because the grammar is closed, any caption can be parsed back into facts
and checked against any scene: that is the `reference_score` the reference judge returns.

Reference score (documented definition): let F be the caption's facts (one per object mention, one per relation
clause), T ⊆ F those true in the scene, and U the scene's objects that no true object mention names. Then

    score(caption, scene) = |T| / (|F| + |U|)

It is 1 exactly when the caption is true and complete, falls with every false fact, and falls when the caption
omits an object (so "remove object" negatives score below the full caption).

A judge asked "does this caption describe the image?" says No to a caption with one false fact far more firmly than
the fraction above does (3 true facts and 2 false ones score 0.6). `false_fact_factor` ε models that: each false
fact multiplies the score by ε,

    score_ε(caption, scene) = |T| / (|F| + |U|) · ε^(|F| − |T|)

so ε = 1 is the fraction and a small ε makes P(Yes) "the whole caption holds", graded by how incomplete a true
caption is and by how many facts a false one gets wrong.
"""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from maple.data.config import WorldConfig
from maple.data.schema import COMPOSITIONAL_SCHEMA, PAIRS_SCHEMA

GRID = 3
COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NEGATIVE_TYPES = (
    "replace_attribute",
    "swap_attributes",
    "replace_relation",
    "swap_relation_order",
    "add_object",
    "remove_object",
)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.size, self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    render_seed: int = 0  # jitter and background noise, so a scene always renders to the same pixels

    def to_json(self) -> str:
        return json.dumps({"objects": [asdict(o) for o in self.objects], "render_seed": self.render_seed})

    @staticmethod
    def from_json(text: str) -> "Scene":
        data = json.loads(text)
        return Scene(tuple(Obj(**o) for o in data["objects"]), data.get("render_seed", 0))


def relation_holds(a: Obj, rel: str, b: Obj) -> bool:
    """Spatial relations read off grid cells (row 0 is the top)."""
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[rel]


# --- captions ---------------------------------------------------------------------------------------------------

Triple = tuple[str, str, str]


@dataclass(frozen=True)
class Clause:
    subject: Triple
    relation: str | None = None
    object: Triple | None = None


@dataclass
class CaptionFacts:
    clauses: list[Clause] = field(default_factory=list)

    @property
    def mentions(self) -> list[Triple]:
        seen: list[Triple] = []
        for c in self.clauses:
            for t in (c.subject, c.object):
                if t is not None and t not in seen:
                    seen.append(t)
        return seen

    @property
    def relations(self) -> list[tuple[Triple, str, Triple]]:
        return [(c.subject, c.relation, c.object) for c in self.clauses if c.relation]


def phrase(t: Triple) -> str:
    return f"a {t[0]} {t[1]} {t[2]}"


def render_caption(clauses: list[Clause]) -> str:
    parts = []
    for c in clauses:
        text = phrase(c.subject)
        if c.relation:
            text += f" {c.relation} {phrase(c.object)}"
        parts.append(text)
    return " and ".join(parts)


_PHRASE = r"an? (\w+) (\w+) (\w+)"


def parse_caption(text: str, relations: list[str] | tuple[str, ...] = tuple(INVERSE)) -> CaptionFacts:
    """Parse a caption of the world's grammar; raise ValueError naming the clause that does not parse."""
    rel_alt = "|".join(re.escape(r) for r in sorted(relations, key=len, reverse=True))
    clause_re = re.compile(rf"^{_PHRASE}(?: ({rel_alt}) {_PHRASE})?$")
    facts = CaptionFacts()
    for part in text.strip().lower().rstrip(".").split(" and "):
        m = clause_re.match(part.strip())
        if not m:
            raise ValueError(f"caption clause {part!r} is not in the synthetic world's grammar")
        g = m.groups()
        subject = (g[0], g[1], g[2])
        if g[3]:
            facts.clauses.append(Clause(subject, g[3], (g[4], g[5], g[6])))
        else:
            facts.clauses.append(Clause(subject))
    return facts


def reference_score(caption: str | CaptionFacts, scene: Scene, false_fact_factor: float = 1.0) -> float:
    """|true facts| / (|caption facts| + |scene objects left unnamed|) · ε^|false facts|; see the module docstring."""
    facts = parse_caption(caption) if isinstance(caption, str) else caption
    by_triple = {o.triple: o for o in scene.objects}
    mentions = facts.mentions
    true_mentions = [t for t in mentions if t in by_triple]
    true_relations = [
        r for r in facts.relations if r[0] in by_triple and r[2] in by_triple and r[0] != r[2]
        and relation_holds(by_triple[r[0]], r[1], by_triple[r[2]])
    ]
    n_facts = len(mentions) + len(facts.relations)
    unnamed = [o for o in scene.objects if o.triple not in true_mentions]
    denominator = n_facts + len(unnamed)
    n_true = len(true_mentions) + len(true_relations)
    return n_true / denominator * false_fact_factor ** (n_facts - n_true) if denominator else 0.0


# --- scenes -----------------------------------------------------------------------------------------------------


def held_out_combinations(cfg: WorldConfig) -> set[tuple[str, str]]:
    """(colour, shape) pairs that never appear in training scenes; fixed by the world seed."""
    combos = sorted(product(cfg.colours, cfg.shapes))
    rng = random.Random(cfg.seed * 7919 + 1)
    n = int(round(cfg.held_out_fraction * len(combos)))
    return set(rng.sample(combos, n))


def _valid_relations(a: Obj, b: Obj, relations: list[str]) -> list[str]:
    return [r for r in relations if relation_holds(a, r, b)]


def sample_scene(rng: random.Random, cfg: WorldConfig, forbid: set, require: set | None = None) -> Scene:
    """Objects with distinct (size, colour, shape) triples in distinct cells. `forbid`: (colour, shape) pairs that
    must not appear; `require`: at least one object must use one of these pairs."""
    while True:
        n = rng.randint(cfg.min_objects, cfg.max_objects)
        cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
        objs: list[Obj] = []
        for (row, col) in cells:
            for _ in range(50):
                o = Obj(rng.choice(cfg.shapes), rng.choice(cfg.colours), rng.choice(cfg.sizes), row, col)
                if (o.colour, o.shape) not in forbid and o.triple not in {x.triple for x in objs}:
                    objs.append(o)
                    break
        if len(objs) != n:
            continue
        if require and not any((o.colour, o.shape) in require for o in objs):
            continue
        if any(not _valid_relations(a, b, cfg.relations) for a, b in zip(objs, objs[1:])):
            continue
        return Scene(tuple(objs), render_seed=rng.randrange(2**31))


def describe(scene: Scene, rng: random.Random, relations: list[str]) -> list[Clause]:
    """One true, complete description: a chain of relation clauses over the objects, in a random valid wording."""
    objs = list(scene.objects)
    if len(objs) == 1:
        return [Clause(objs[0].triple)]
    clauses = []
    for a, b in zip(objs, objs[1:]):
        if rng.random() < 0.5:
            a, b = b, a
        clauses.append(Clause(a.triple, rng.choice(_valid_relations(a, b, relations)), b.triple))
    rng.shuffle(clauses)
    return clauses


def render_scene(scene: Scene, size: int) -> tuple[Image.Image, np.ndarray]:
    """RGB image and an object-index mask (0 background, i+1 for scene.objects[i]); deterministic per scene."""
    rng = np.random.default_rng(scene.render_seed)
    base = rng.integers(10, 70, size=3)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    mask_img = Image.new("L", (size, size), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask_img)
    cell = size / GRID
    for i, o in enumerate(scene.objects):
        radius = cell * (0.42 if o.size == "large" else 0.24)
        slack = cell / 2 - radius
        cx = (o.col + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        cy = (o.row + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        if o.shape == "circle":
            shape = ("ellipse", box)
        elif o.shape == "square":
            r = radius * 0.85
            shape = ("rectangle", [cx - r, cy - r, cx + r, cy + r])
        elif o.shape == "triangle":
            shape = ("polygon", [(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)])
        else:  # diamond (and any other shape name): a rhombus
            shape = ("polygon", [(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)])
        getattr(draw, shape[0])(shape[1], fill=COLOUR_RGB.get(o.colour, (128, 128, 128)))
        getattr(mdraw, shape[0])(shape[1], fill=i + 1)
    return img, np.asarray(mask_img)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --- compositional negatives ------------------------------------------------------------------------------------


def make_negative(scene: Scene, clauses: list[Clause], kind: str, rng: random.Random, cfg: WorldConfig
                  ) -> tuple[list[Clause], Scene | None] | None:
    """A typed hard-negative caption for `scene` (and, for swaps, the scene it would truly describe), or None
    when the type does not apply to this scene. Every negative scores below the true caption."""
    objs = list(scene.objects)
    rel_clauses = [i for i, c in enumerate(clauses) if c.relation]
    if kind == "replace_attribute":
        i = rng.randrange(len(objs))
        o = objs[i]
        attr = rng.choice(["colour", "size"])
        pool = [v for v in (cfg.colours if attr == "colour" else cfg.sizes) if v != getattr(o, attr)]
        new = (rng.choice(pool), o.colour, o.shape) if attr == "size" else (o.size, rng.choice(pool), o.shape)
        if new in {x.triple for x in objs}:
            return None
        return [_replace_triple(c, o.triple, new) for c in clauses], None
    if kind == "swap_attributes":
        pairs = [(a, b) for a, b in zip(objs, objs[1:]) if a.colour != b.colour]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        na, nb = (a.size, b.colour, a.shape), (b.size, a.colour, b.shape)
        if {na, nb} & ({x.triple for x in objs} - {a.triple, b.triple}):
            return None
        swapped = [_replace_triple(_replace_triple(c, a.triple, ("#",)), b.triple, nb) for c in clauses]
        swapped = [_replace_triple(c, ("#",), na) for c in swapped]
        counterpart = Scene(tuple(Obj(a.shape, b.colour, a.size, a.row, a.col) if o is a else
                                  Obj(b.shape, a.colour, b.size, b.row, b.col) if o is b else o for o in objs),
                            scene.render_seed)
        return swapped, counterpart
    if kind == "replace_relation" and rel_clauses:
        i = rng.choice(rel_clauses)
        c = clauses[i]
        by = {o.triple: o for o in objs}
        wrong = [r for r in cfg.relations if not relation_holds(by[c.subject], r, by[c.object])]
        if not wrong:
            return None
        out = list(clauses)
        out[i] = Clause(c.subject, rng.choice(wrong), c.object)
        return out, None
    if kind == "swap_relation_order" and rel_clauses:
        i = rng.choice(rel_clauses)
        c = clauses[i]
        out = list(clauses)
        out[i] = Clause(c.object, c.relation, c.subject)
        by = {o.triple: o for o in objs}
        a, b = by[c.subject], by[c.object]
        counterpart = Scene(tuple(Obj(o.shape, o.colour, o.size, b.row, b.col) if o is a else
                                  Obj(o.shape, o.colour, o.size, a.row, a.col) if o is b else o for o in objs),
                            scene.render_seed)
        return out, counterpart
    if kind == "add_object":
        present = {o.triple for o in objs}
        pool = [t for t in product(cfg.sizes, cfg.colours, cfg.shapes) if t not in present]
        anchor = rng.choice(objs)
        return clauses + [Clause(rng.choice(pool), rng.choice(cfg.relations), anchor.triple)], None
    if kind == "remove_object" and len(objs) >= 2:
        # Describe all but one object: a true but incomplete caption.
        keep = objs[:-1] if rng.random() < 0.5 else objs[1:]
        return describe(Scene(tuple(keep), scene.render_seed), rng, cfg.relations), None
    return None


def _replace_triple(c: Clause, old: tuple, new: tuple) -> Clause:
    return Clause(new if c.subject == old else c.subject, c.relation, new if c.object == old else c.object)


# --- the generator ----------------------------------------------------------------------------------------------


def _pairs_rows(split: str, n: int, cfg: WorldConfig, rng: random.Random, forbid: set) -> list[dict]:
    rows = []
    for i in range(n):
        scene = sample_scene(rng, cfg, forbid)
        img, _ = render_scene(scene, cfg.image_size)
        captions = []
        for _ in range(cfg.captions_per_image * 4):
            text = render_caption(describe(scene, rng, cfg.relations))
            if text not in captions:
                captions.append(text)
            if len(captions) == cfg.captions_per_image:
                break
        rows.append({"id": f"{split}-{i:06d}", "image": encode_png(img), "image_format": "png", "captions": captions,
                     "source": f"synthetic:{split}", "annotation": scene.to_json()})
    return rows


def _compositional_rows(n: int, cfg: WorldConfig, rng: random.Random, held_out: set) -> list[dict]:
    rows = []
    i = 0
    while len(rows) < n:
        # Alternate: scenes using a held-out combination, and scenes made only of combinations seen in training.
        with_held_out = i % 2 == 0 and bool(held_out)
        scene = sample_scene(rng, cfg, forbid=set() if with_held_out else held_out,
                             require=held_out if with_held_out else None)
        if len(scene.objects) < 2:
            continue
        i += 1
        clauses = describe(scene, rng, cfg.relations)
        img, _ = render_scene(scene, cfg.image_size)
        for kind in NEGATIVE_TYPES:
            made = make_negative(scene, clauses, kind, rng, cfg)
            if made is None:
                continue
            neg_clauses, counterpart = made
            rows.append({
                "id": f"comp-{i:06d}-{kind}", "image": encode_png(img), "image_format": "png",
                "caption": render_caption(clauses), "negative_caption": render_caption(neg_clauses),
                "negative_type": kind,
                "negative_image": encode_png(render_scene(counterpart, cfg.image_size)[0]) if counterpart else None,
                "held_out": any((o.colour, o.shape) in held_out for o in scene.objects),
                "annotation": scene.to_json(),
            })
    return rows[:n]


def write_shards(rows: list[dict], schema: pa.Schema, out_dir: Path, shard_size: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(0, max(len(rows), 1), shard_size):
        path = out_dir / f"part-{k // shard_size:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k:k + shard_size], schema=schema), path)
        paths.append(path)
    return paths


def synthesize(cfg: WorldConfig, out_dir: str | Path) -> dict:
    """Write train/val/test pairs, the compositional test and its validation twin (`compositional_val`, for tuning) as
    Parquet shards; return a summary."""
    out = Path(out_dir)
    held_out = held_out_combinations(cfg)
    summary = {"held_out_combinations": sorted(held_out), "splits": {}}
    for split, n, seed_offset in (("train", cfg.n_train, 1), ("val", cfg.n_val, 2), ("test", cfg.n_test, 3)):
        rng = random.Random(cfg.seed * 1_000_003 + seed_offset)
        forbid = held_out if split == "train" else set()
        rows = _pairs_rows(split, n, cfg, rng, forbid)
        write_shards(rows, PAIRS_SCHEMA, out / split, cfg.shard_size)
        summary["splits"][split] = len(rows)
    for split, n, seed_offset in (("compositional", cfg.n_compositional, 4),
                                  ("compositional_val", cfg.n_compositional_val, 5)):
        rng = random.Random(cfg.seed * 1_000_003 + seed_offset)
        comp = _compositional_rows(n, cfg, rng, held_out)
        write_shards(comp, COMPOSITIONAL_SCHEMA, out / split, cfg.shard_size)
        summary["splits"][split] = len(comp)
    (out / "world.json").write_text(json.dumps({"config": cfg.model_dump(), **summary}, indent=1))
    return summary
