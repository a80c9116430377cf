"""Can a tiny dual encoder learn relations and attribute bindings at all, when trained on exactly those negatives?

    python bench/tower_capacity.py                                          # the grid in docs/demo.md
    python bench/tower_capacity.py --sizes 128x4 --steps 1600 --n-train 20000 --kinds swap_relation_order

The demo's full variant can only beat InfoNCE on relations if its towers can represent them. This measures that
directly, before any loss is tuned: a tiny CLIP twin (`maple.models.DualEncoder.tiny`, sizes `<hidden>x<layers>`) is
trained from scratch on synthetic-world scenes with symmetric InfoNCE, each row adding one typed hard-negative caption
(`maple.data.synth.make_negative`, the kinds in `--kinds`) to the image's candidates. It then reports, per kind, how
often an image scores its caption above the perturbed one, on its own training rows ("seen": can it fit them?) and on
fresh scenes ("new": does it generalise?). 50 % is chance. The training set is small on purpose where it matches the
demo's (`--n-train 2000`); `--n-train 20000` asks whether more distinct scenes make the rule learnable.

It also asks the question one level down, with a linear probe (`binding_probe`): on two-object scenes, is "the object
of the alphabetically earlier colour is the upper one" decodable by a logistic regression from the frozen image
embeddings, and from the embeddings of a true caption ("a small red circle above a large blue square", in either
order)? The label binds a colour to a position, so a bag of words or a bag of patches cannot carry it. `--references`
adds the same probe on raw 16×16 pixels, on the untrained tower and on the bundled pretrained all-MiniLM-L6-v2, and
`--supervised` asks whether each tower *can* represent the label: the same tower trained end to end on it (a linear
head on the pooled embedding, binary cross-entropy), scored on held-out scenes.

Writes bench/results/tower_capacity.json (one entry per configuration, merged by key) and prints a table.
Not run by CI at full size (tens of minutes on 2 cores); tests/bench runs it tiny so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_model  # bench/machine.py; scripts run as `python bench/<name>.py`

from maple.data.config import WorldConfig
from maple.data.synth import (
    GRID,
    Clause,
    Obj,
    Scene,
    describe,
    make_negative,
    render_caption,
    render_scene,
    sample_scene,
)
from maple.models.config import ModelConfig, TinyConfig
from maple.models.dual_encoder import DualEncoder

RESULTS = Path(__file__).parent / "results" / "tower_capacity.json"
KINDS = ("replace_attribute", "swap_attributes", "replace_relation", "swap_relation_order")


def make_rows(n: int, seed: int, world: WorldConfig, kinds: tuple[str, ...]) -> list[tuple]:
    """(scene, caption, {kind: negative caption}) for n scenes that admit at least one of `kinds`."""
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        scene = sample_scene(rng, world, set())
        clauses = describe(scene, rng, world.relations)
        negatives = {}
        for kind in kinds:
            made = make_negative(scene, clauses, kind, rng, world)
            if made:
                negatives[kind] = render_caption(made[0])
        if negatives:
            rows.append((scene, render_caption(clauses), negatives))
    return rows


@torch.no_grad()
def accuracy(model: DualEncoder, rows: list[tuple], pixels: torch.Tensor, kinds: tuple[str, ...]) -> dict:
    """Per kind: % of images that score their caption above the kind's perturbed caption."""
    images = torch.cat([model.embed_images(pixels[i:i + 256]) for i in range(0, len(rows), 256)])
    out = {}
    for kind in kinds:
        sel = [i for i, r in enumerate(rows) if kind in r[2]]
        pos = model.embed_texts(**model.tokenize([rows[i][1] for i in sel]))
        neg = model.embed_texts(**model.tokenize([rows[i][2][kind] for i in sel]))
        wins = ((images[sel] * pos).sum(1) > (images[sel] * neg).sum(1)).float()
        out[kind] = round(100 * wins.mean().item(), 1)
    return out


def binding_rows(n: int, seed: int, world: WorldConfig) -> list[tuple[Scene, str, int]]:
    """(scene, true caption, label) for two-object scenes in different grid rows; label 1 where the upper object's
    colour comes first alphabetically. The caption names the pair in a random order with `above` or `below`."""
    rng, rows = random.Random(seed), []
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    while len(rows) < n:
        (r1, c1), (r2, c2) = rng.sample(cells, 2)
        colours = rng.sample(list(world.colours), 2)
        if r1 == r2:
            continue
        a, b = (Obj(rng.choice(world.shapes), colour, rng.choice(world.sizes), r, c)
                for colour, (r, c) in zip(colours, ((r1, c1), (r2, c2))))
        upper, lower = (a, b) if a.row < b.row else (b, a)
        clause = Clause(upper.triple, "above", lower.triple) if rng.random() < 0.5 else \
            Clause(lower.triple, "below", upper.triple)
        rows.append((Scene((a, b), render_seed=rng.randrange(2**31)), render_caption([clause]),
                     int(upper.colour < lower.colour)))
    return rows


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2: float = 1e-3) -> float:
    """Held-out accuracy (%) of an L2-regularised logistic regression fitted by full-batch L-BFGS on frozen features
    (train_x (N, D), labels (N,) in {0, 1}); features are standardised with the training set's statistics."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1] + 1, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = train_x @ weight[:-1] + weight[-1]
        loss = F.binary_cross_entropy_with_logits(logits, train_y.float()) + l2 * weight[:-1].square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return round(100 * ((test_x @ weight[:-1] + weight[-1] > 0).long() == test_y).float().mean().item(), 1)


@torch.no_grad()
def binding_probe(embed_images, embed_texts, world: WorldConfig, n: int = 2000, seed: int = 7) -> dict:
    """Probe accuracy (%) of the binding label from `embed_images(list[PIL]) -> (N, D)` and
    `embed_texts(list[str]) -> (N, D)` (either may be None), trained on n scenes and tested on n/2 others."""
    train, test = binding_rows(n, seed, world), binding_rows(n // 2, seed + 1, world)
    train_y, test_y = (torch.tensor([r[2] for r in rows]) for rows in (train, test))
    out = {}
    if embed_images is not None:
        features = [embed_images([render_scene(r[0], world.image_size)[0] for r in rows]) for rows in (train, test)]
        out["image"] = linear_probe(features[0], train_y, features[1], test_y)
    if embed_texts is not None:
        features = [embed_texts([r[1] for r in rows]) for rows in (train, test)]
        out["text"] = linear_probe(features[0], train_y, features[1], test_y)
    return out


def tower_probe(model: DualEncoder, world: WorldConfig, n: int) -> dict:
    def images(pictures):
        pixels = model.preprocess(pictures)["pixel_values"]
        return torch.cat([model.embed_images(pixels[i:i + 256]) for i in range(0, len(pictures), 256)])

    def texts(captions):
        return torch.cat([model.embed_texts(**model.tokenize(captions[i:i + 256]))
                          for i in range(0, len(captions), 256)])

    model.eval()
    return binding_probe(images, texts, world, n)


def supervised_binding(hidden: int, layers: int, patch: int, embed_dim: int, world: WorldConfig, n: int,
                       steps: int = 600, batch: int = 64, lr: float = 1e-3, seed: int = 0) -> dict:
    """Held-out accuracy (%) of each tower of a fresh tiny twin trained end to end on the binding label alone: the
    capacity of the architecture, apart from what contrastive training makes of it."""
    train, test = binding_rows(2 * n, seed + 7, world), binding_rows(n // 2, seed + 8, world)
    labels = torch.tensor([r[2] for r in train]).float()
    out = {}
    for side in ("image", "text"):
        torch.manual_seed(seed)
        tiny = TinyConfig(hidden_size=hidden, num_layers=layers, num_heads=4, intermediate_size=2 * hidden,
                          patch_size=patch, embed_dim=embed_dim)
        model = DualEncoder.tiny(ModelConfig(tiny=tiny, image_size=world.image_size))
        if side == "image":
            def embed(rows, model=model):
                return model.embed_images(model.preprocess(
                    [render_scene(r[0], world.image_size)[0] for r in rows])["pixel_values"])
        else:
            def embed(rows, model=model):
                return model.embed_texts(**model.tokenize([r[1] for r in rows]))
        head = torch.nn.Linear(embed_dim, 1)
        optimiser = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=lr)
        rng = random.Random(seed)
        for _ in range(steps):
            idx = rng.sample(range(len(train)), batch)
            loss = F.binary_cross_entropy_with_logits(head(embed([train[i] for i in idx])).squeeze(1), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat([head(embed(test[i:i + 256])).squeeze(1) for i in range(0, len(test), 256)])
        out[side] = round(100 * ((logits > 0).long() == torch.tensor([r[2] for r in test])).float().mean().item(), 1)
    return out


def reference_probes(world: WorldConfig, n: int) -> dict:
    """The probe on raw 16×16 pixels (is the label in the pictures at all?) and on the pretrained MiniLM text tower."""
    from sentence_transformers import SentenceTransformer

    from maple.models.text_tower import minilm_path

    minilm = SentenceTransformer(str(minilm_path()), device="cpu")
    raw = binding_probe(lambda pictures: torch.tensor(
        np.stack([np.asarray(p.resize((16, 16)), dtype=np.float32).reshape(-1) / 255 for p in pictures])),
        None, world, n)
    text = binding_probe(None, lambda captions: torch.from_numpy(
        minilm.encode(captions, batch_size=128, normalize_embeddings=True)), world, n)
    return {"raw pixels 16x16": raw, "all-MiniLM-L6-v2 (pretrained, frozen)": text}


def parse_curriculum(spec: str) -> list[tuple[int, tuple[str, ...] | None, int]]:
    """"2:above+below:400/2:all:400" → [(2, ("above", "below"), 400), (2, None, 400)]: stages of (objects per scene
    at most, relations named in captions or None for the world's, steps)."""
    stages = []
    for stage in spec.split("/"):
        objects, relations, steps = stage.split(":")
        stages.append((int(objects), None if relations == "all" else tuple(relations.split("+")), int(steps)))
    return stages


def run(hidden: int, layers: int, patch: int, embed_dim: int, steps: int, n_train: int, n_eval: int,
        kinds: tuple[str, ...], batch: int, lr: float, seed: int, probe_n: int = 2000,
        max_objects: int | None = None, curriculum: str | None = None) -> dict:
    """Train from scratch with InfoNCE + one typed hard negative per row, for `steps` on the world (`max_objects`),
    or through the stages of `curriculum` (`parse_curriculum`), `n_train` fresh scenes per stage; score on the
    world's fresh scenes after each stage."""
    torch.manual_seed(seed)
    world = WorldConfig() if max_objects is None else WorldConfig(max_objects=max_objects)
    stages = [(world, steps)] if curriculum is None else [
        (WorldConfig(max_objects=objects, **({"relations": list(relations)} if relations else {})), stage_steps)
        for objects, relations, stage_steps in parse_curriculum(curriculum)]
    fresh = make_rows(n_eval, seed + 2, world, kinds)
    tiny = TinyConfig(hidden_size=hidden, num_layers=layers, num_heads=4, intermediate_size=2 * hidden,
                      patch_size=patch, embed_dim=embed_dim)
    model = DualEncoder.tiny(ModelConfig(tiny=tiny, image_size=world.image_size))
    untrained = tower_probe(model, world, probe_n)

    def pixels(rows):
        return model.preprocess([render_scene(r[0], world.image_size)[0] for r in rows])["pixel_values"]

    fresh_pixels = pixels(fresh)
    log_scale = torch.nn.Parameter(torch.tensor(2.659))  # CLIP's initial 1/0.07
    optimiser = torch.optim.AdamW([*model.parameters(), log_scale], lr=lr, weight_decay=0.01)
    rng, start, losses, after_stage, own_world = random.Random(seed), time.perf_counter(), [], [], []
    for number, (stage_world, stage_steps) in enumerate(stages):
        train = make_rows(n_train, seed + 1 + 10 * number, stage_world, kinds)
        train_pixels = pixels(train)
        model.train()
        for _ in range(stage_steps):
            idx = rng.sample(range(len(train)), batch)
            rows = [train[i] for i in idx]
            texts = [r[1] for r in rows] + [rng.choice(list(r[2].values())) for r in rows]
            images, captions = model.embed_images(train_pixels[idx]), model.embed_texts(**model.tokenize(texts))
            scale, labels = log_scale.exp().clamp(max=100), torch.arange(batch)
            # image -> (all captions + all hard negatives); caption -> images
            loss = (F.cross_entropy(scale * images @ captions.T, labels)
                    + F.cross_entropy(scale * captions[:batch] @ images.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        model.eval()
        after_stage.append(accuracy(model, fresh, fresh_pixels, kinds))
        if curriculum is not None:  # and on fresh scenes of the stage's own world
            own = make_rows(n_eval, seed + 3 + 10 * number, stage_world, kinds)
            own_world.append(accuracy(model, own, pixels(own), kinds))
    seconds = round(time.perf_counter() - start, 1)
    return {"hidden": hidden, "layers": layers, "patch": patch, "embed_dim": embed_dim, "steps": steps,
            "n_train": n_train, "curriculum": curriculum,
            "kinds": list(kinds), "batch": batch, "lr": lr, "seed": seed,
            "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 3),
            "seen": accuracy(model, train[:n_eval], train_pixels[:n_eval], kinds),
            "new": after_stage[-1], "new_after_each_stage": after_stage, "stage_world_new": own_world,
            "probe": {"untrained": untrained, "trained": tower_probe(model, world, probe_n)},
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64x2,128x4", help="comma-separated <hidden>x<layers> (64x2: the demo's)")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=64, help="the shared space's width (the demo's: 64)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--n-train", type=int, nargs="*", default=[2000, 20000],
                        help="training scenes of each contrastive run; none given: no contrastive run")
    parser.add_argument("--n-eval", type=int, default=600)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--max-objects", type=int, default=None,
                        help="objects per scene at most (default: the world's); 2 asks whether relations are learnt "
                             "where each caption has one")
    parser.add_argument("--curriculum", default=None,
                        help="stages '<objects>:<relations|all>:<steps>/...', e.g. 2:above+below:400/2:all:400/3:all:400"
                             " (relations joined by +); replaces --steps; scored on the world of --max-objects")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-n", type=int, default=2000, help="scenes the binding probe trains on")
    parser.add_argument("--references", action="store_true",
                        help="also probe raw pixels and the pretrained MiniLM text tower")
    parser.add_argument("--supervised", action="store_true",
                        help="also train each size's towers on the binding label directly (can they represent it?)")
    parser.add_argument("--supervised-steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = tuple(args.kinds.split(","))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    results["machine"] = cpu_model()
    if args.references:
        results["reference_probes"] = reference_probes(WorldConfig(), args.probe_n)
        print(f"binding probe, references: {results['reference_probes']}", flush=True)
    for size in args.sizes.split(","):
        hidden, layers = (int(x) for x in size.split("x"))
        if args.supervised:
            key = f"{size}/p{args.patch}/e{args.embed_dim}/{args.supervised_steps}steps/s{args.seed}"
            learnt = supervised_binding(hidden, layers, args.patch, args.embed_dim, WorldConfig(), args.probe_n,
                                        args.supervised_steps, args.batch, args.lr, args.seed)
            results.setdefault("supervised_binding", {})[key] = learnt
            print(f"binding learnt end to end, {key}: {learnt}", flush=True)
        for n_train in args.n_train:
            row = run(hidden, layers, args.patch, args.embed_dim, args.steps, n_train, args.n_eval, kinds, args.batch,
                      args.lr,
                      args.seed, args.probe_n, args.max_objects, args.curriculum)
            schedule = f"curriculum[{args.curriculum}]" if args.curriculum else f"{args.steps}steps"
            key = f"{size}/p{args.patch}/e{args.embed_dim}/{schedule}/n{n_train}/{'+'.join(kinds)}/s{args.seed}"
            if args.max_objects is not None:
                key += f"/max{args.max_objects}objects"
            results["runs"][key] = row
            print(f"{key:<90} seen {row['seen']}  new {row['new']}  probe {row['probe']}  ({row['seconds']} s)",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
