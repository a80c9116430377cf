"""Long texts of the synthetic world, for MATE's image ⇄ long-text retrieval (ARCHITECTURE.md, "The two recipes").

Two kinds, both longer than a CLIP text window (77 tokens) and deterministic by seed:

- a *long caption* (`long_caption`): multi-sentence prose that names every object with its attributes and grid
  position, states every relation that holds between every pair of objects, and mixes in distractor sentences about
  the background (true of every scene, so they carry no information); sentences in random order, distractors added
  until the text has at least `min_tokens` tokens;
- a *document* (`document`): unrelated paragraphs (weather, cooking, sports, travel notes) with one paragraph, at a
  random position, that describes the scene; at least `min_tokens` tokens before the scene paragraph is placed.

Tokens are counted as the world's word-level tokenizer counts them (words and punctuation runs:
`maple.models.tokenizer`), so "longer than 77 tokens" holds for the tiny CLIP twin's window exactly.

`long_text_rows(pairs_rows, seed)` maps PAIRS_SCHEMA rows (with the scene in `annotation`) to LONG_TEXT_SCHEMA rows;
`write_long_texts(world_dir, out_dir, seed)` does it for every split of a synthesised world.
"""

from __future__ import annotations

import random
import re
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from maple.data.files import atomic_path
from maple.data.schema import LONG_TEXT_SCHEMA
from maple.data.synth import Obj, Scene, relation_holds

ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
RELATIONS = ("left of", "right of", "above", "below")

BACKGROUND = (
    "The background is a dark, slightly noisy texture.",
    "Nothing else can be seen near the edges of the frame.",
    "The lighting is flat and even across the whole picture.",
    "There is no text, border or watermark anywhere.",
    "The backdrop looks like a plain sheet of dull material.",
    "Fine grain covers the empty space between the shapes.",
    "The shapes cast no shadows on the ground behind them.",
    "The picture is seen straight on, from a fixed camera.",
    "Empty space fills most of the remaining area.",
    "The edges of the shapes are crisp and clearly drawn.",
    "No people, animals or plants appear in this picture.",
    "The overall tone of the backdrop is muted and calm.",
)

# Unrelated paragraphs for documents: sentence templates filled with random words and numbers.
TOPICS = {
    # No shape, colour, size or relation word of the world appears here or in BACKGROUND: distractors carry no
    # information about any scene.
    "weather": ("The forecast for {town} calls for {n} millimetres of rain by the evening.",
                "Winds from the {dir} will reach {n} kilometres per hour near the coast.",
                "Temperatures should stay around {n} degrees until the weekend.",
                "Farmers near {town} expect the dry spell to end on {day}."),
    "cooking": ("Heat the oven to {n} degrees before you prepare the dough.",
                "Stir the sauce for {n} minutes so that it does not burn.",
                "A pinch of salt brings out the flavour of the roasted vegetables.",
                "Leave the bread to rest until {day} morning for a better crust."),
    "sports": ("The team from {town} won the final by {n} points on {day}.",
               "Their coach praised the defence after a tense second half.",
               "More than {n} thousand fans travelled to watch the match.",
               "The striker has now scored {n} goals this season."),
    "travel": ("The train to {town} leaves every {n} minutes from the main station.",
               "Visitors should book a room early, since hotels fill up by {day}.",
               "The old harbour of {town} is a short walk from the market.",
               "A ferry crosses the bay {n} times a day in summer."),
}
FILLERS = {"town": ("Arden", "Bellmoor", "Corvale", "Dunmere", "Eastwick", "Fallowby", "Greystone", "Hollins"),
           "dir": ("north", "south", "east", "west"),
           "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")}

_TOKEN = re.compile(r"\w+|[^\w\s]+")  # the word tokenizer's pre-tokenizer (tokenizers' `Whitespace`)


def count_tokens(text: str) -> int:
    """Tokens of `text` for the world's word-level tokenizer, without the appended [EOS]."""
    return len(_TOKEN.findall(text))


def position(o: Obj) -> str:
    """The grid cell in words: "top left", ..., "centre" for the middle cell."""
    if (o.row, o.col) == (1, 1):
        return "centre"
    return f"{ROWS[o.row]} {COLS[o.col]}"


def name(o: Obj) -> str:
    return f"{o.size} {o.colour} {o.shape}"


def scene_sentences(scene: Scene, relations: tuple[str, ...] | list[str] = RELATIONS) -> list[str]:
    """One sentence per object (attributes and cell) and one per relation that holds, for every ordered pair with
    the first object earlier in `scene.objects` (the inverse relation is implied, so it is not repeated)."""
    sentences = [f"There is a {name(o)} in the {position(o)}." for o in scene.objects]
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1:]:
            sentences += [f"The {name(a)} is {r} the {name(b)}." for r in relations if relation_holds(a, r, b)]
    return sentences


def long_caption(scene: Scene, rng: random.Random, min_tokens: int = 100,
                 relations: tuple[str, ...] | list[str] = RELATIONS) -> str:
    """Every object, attribute and relation of `scene`, mixed with background distractors, ≥ `min_tokens` tokens."""
    n = len(scene.objects)
    intro = f"This picture shows {n} shape{'s' if n > 1 else ''} on a dark background."
    sentences = scene_sentences(scene, relations)
    distractors = list(BACKGROUND)
    rng.shuffle(distractors)
    body = sentences + distractors[:2]
    while count_tokens(" ".join([intro, *body])) < min_tokens:
        if len(body) - len(sentences) == len(distractors):
            distractors += distractors  # a 1-object scene at a large min_tokens: background sentences repeat
        body.append(distractors[len(body) - len(sentences)])
    rng.shuffle(body)
    return " ".join([intro, *body])


def unrelated_paragraph(rng: random.Random) -> str:
    topic = TOPICS[rng.choice(sorted(TOPICS))]
    sentences = rng.sample(topic, k=3)
    fill = {key: rng.choice(values) for key, values in FILLERS.items()}
    return " ".join(s.format(n=rng.randint(2, 95), **fill) for s in sentences)


def document(scene: Scene, rng: random.Random, min_tokens: int = 160,
             relations: tuple[str, ...] | list[str] = RELATIONS) -> str:
    """Unrelated paragraphs (≥ `min_tokens` tokens together) with the scene's paragraph inserted at a random place;
    paragraphs separated by blank lines."""
    paragraphs: list[str] = []
    while count_tokens(" ".join(paragraphs)) < min_tokens:
        paragraphs.append(unrelated_paragraph(rng))
    scene_paragraph = " ".join(["The figure attached to this note shows a few shapes.", *scene_sentences(scene,
                                                                                                     relations)])
    paragraphs.insert(rng.randint(0, len(paragraphs)), scene_paragraph)
    return "\n\n".join(paragraphs)


def row_rng(row_id: str, seed: int, kind: str) -> random.Random:
    """A generator per (row, kind, seed): a row's texts do not depend on which other rows are generated with it."""
    return random.Random(zlib.crc32(f"{seed}:{kind}:{row_id}".encode()))


def long_text_rows(rows: list[dict], seed: int = 0, min_caption_tokens: int = 100, min_document_tokens: int = 160
                   ) -> list[dict]:
    """PAIRS_SCHEMA rows (scene in `annotation`) -> LONG_TEXT_SCHEMA rows, deterministic by (row id, seed)."""
    out = []
    for row in rows:
        if not row.get("annotation"):
            raise ValueError(f"row {row.get('id')!r} has no annotation: long texts need the synthetic world's scene "
                             "(maple.data.synth writes it); other data sets bring their own long texts")
        scene = Scene.from_json(row["annotation"])
        out.append({"id": row["id"], "image": row.get("image"), "caption": row["captions"][0],
                    "long_caption": long_caption(scene, row_rng(row["id"], seed, "caption"), min_caption_tokens),
                    "document": document(scene, row_rng(row["id"], seed, "document"), min_document_tokens),
                    "annotation": row["annotation"]})
    return out


def write_long_texts(world_dir: str | Path, out_dir: str | Path, seed: int = 0,
                     splits: tuple[str, ...] = ("train", "val", "test"), **lengths: int) -> dict[str, int]:
    """For each split of a synthesised world, write `<out_dir>/<split>/<shard>.parquet` (LONG_TEXT_SCHEMA), one
    output shard per input shard; returns rows per split. A shard already written is skipped (idempotent resume)."""
    counts = {}
    for split in splits:
        shards = sorted((Path(world_dir) / split).glob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{Path(world_dir) / split} has no Parquet shards; synthesise the world first "
                                    "(python -m jobs.synth)")
        counts[split] = 0
        for shard in shards:
            target = Path(out_dir) / split / shard.name
            if not target.exists():
                rows = long_text_rows(pq.read_table(shard).to_pylist(), seed, **lengths)
                with atomic_path(target) as tmp:  # a crash mid-write leaves no half shard that a re-run would skip
                    pq.write_table(pa.Table.from_pylist(rows, schema=LONG_TEXT_SCHEMA), tmp)
            counts[split] += pq.read_metadata(target).num_rows
    return counts
