"""``curate``: the command line. One table of subcommands, each in the module of its room.

Every command module exposes ``HELP`` (one line), ``configure(parser)`` (adds its
arguments) and ``run(args) -> int``. Modules are imported only when their command is
used, so ``curate audit`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clipcurate.pipelines.errors import UserError

COMMANDS: dict[str, str] = {
    "run": "clipcurate.pipelines.run_cli",
    "demo": "clipcurate.curation.demo",
    "retry": "clipcurate.pipelines.download.retry",
    "train": "clipcurate.train.train_cli",
    "eval": "clipcurate.train.eval_cli",
    "audit": "clipcurate.curation.audit.cli",
    "stats": "clipcurate.curation.audit.stats_cli",
    "metadata": "clipcurate.curation.metadata_cli",
    "ablate": "clipcurate.curation.ablate_cli",
    "filter-model": "clipcurate.train.filter_model_cli",
    "export": "clipcurate.pipelines.export_cli",
    "index": "clipcurate.curation.index_cli",
    "search": "clipcurate.curation.search_cli",
    "heads": "clipcurate.train.heads_cli",
}

SUMMARIES: dict[str, str] = {
    "run": "run a recipe over an input list: download, filter, dedup, balance, write shards",
    "demo": "start the local sample web and run the demo recipe end to end",
    "retry": "re-fetch only the transiently failed samples of a finished run",
    "train": "train a contrastive (CLIP/SigLIP) model on output shards",
    "eval": "zero-shot classification and retrieval of a checkpoint on a labeled parquet",
    "audit": "write an HTML report with plots of a run and each stage's effect",
    "stats": "print a run's key numbers (JSON with --json)",
    "metadata": "build or inspect MetaCLIP metadata entry lists",
    "ablate": "compare recipe variants by training on each at equal samples seen",
    "filter-model": "train the DFN filter model clip_score scores a pool with, from trusted pairs",
    "export": "write a run's samples as webdataset tars or a DataComp uid subset file",
    "index": "build a faiss index over a run's CLIP image embeddings",
    "search": "find the samples of a run nearest to a text or an image (HTML page with thumbnails)",
    "heads": "train a head (NSFW, aesthetic, watermark, ...) over CLIP embeddings for clip_heads, or show one",
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="clipcurate: turn web image-text pairs into curated CLIP training shards.",
        epilog="Run 'curate COMMAND --help' for a command's options. Example: curate demo",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{k}: {v}" for k, v in SUMMARIES.items()))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name])
    parser = argparse.ArgumentParser(prog=f"curate {name}", description=module.HELP)
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"curate {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
