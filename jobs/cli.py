"""The `maple` console script: one subcommand per job, each running `jobs.<module>.main` with the same arguments
as `python -m jobs.<module>` (so `ray job submit -- python -m jobs.<module> ...` runs the same code). The CLI
dispatches to the jobs by module name; no job imports it. A `SetupError` (a setting that cannot work, found before
any work) ends the command with its one sentence and exit code 2, like a config error, not a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from maple.section import SetupError

# subcommand -> (jobs module, one-line help)
COMMANDS = {
    "data synth": ("jobs.synth", "write the synthetic world as Parquet shards"),
    "data import": ("jobs.import_data", "your pairs (images + captions, COCO, WebDataset, Parquet) as Parquet splits"),
    "eval": ("jobs.evaluate", "evaluate an embedder: recall@K, compositional accuracy, modality gap"),
    "mine": ("jobs.mine", "embed, retrieve, judge and mine hard negatives, soft labels and rankings"),
    "train-reranker": ("jobs.train_reranker", "train a reranker (UniME-V2 pairwise + listwise) on mined data"),
    "train": ("jobs.train", "train an embedder: Ray Train + DeepSpeed, InfoNCE + RPA + soft-label alignment"),
    "index": ("jobs.index", "build the search index that /v1/search answers from"),
    "serve": ("serve.app", "serve embeddings, rerank and search over HTTP (Ray Serve)"),
    "pal": ("jobs.pal", "PAL: align two frozen encoders with K anchors (cache, train, evaluate)"),
    "pal-study": ("jobs.pal_study", "PAL data-scaling study vs a linear projection"),
    "mate": ("jobs.mate", "MATE: images and long texts through an LLM text embedder and a staged projection"),
    "demo": ("jobs.demo", "the whole pipeline on the synthetic world on an embedded local Ray"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, (module, _) in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0].split())):
        words = name.split()
        if argv[:len(words)] == words:
            job = importlib.import_module(module)
            sys.argv = [f"maple {name}", *argv[len(words):]]  # so --help names the subcommand
            try:
                job.main(argv[len(words):])
            except SetupError as exc:  # a check before any work: its one sentence names the key and the fix
                print(f"maple {name}: {exc}", file=sys.stderr)
                sys.exit(2)
            return
    parser = argparse.ArgumentParser(prog="maple", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(f"  {n:16s} {h}" for n, (_, h) in
                                                                       COMMANDS.items()) +
                                     "\n\n`maple <command> --help` for a command's options.")
    parser.add_argument("command", nargs="?", help="one of the commands below")
    args, _ = parser.parse_known_args(argv)
    if args.command:
        parser.error(f"unknown command {' '.join(argv)!r}")
    parser.print_help()


if __name__ == "__main__":
    main()
