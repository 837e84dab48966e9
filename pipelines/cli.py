"""``curate``: the command line. One table of subcommands, each in the module of its room.

Every command module exposes ``HELP`` (one line), ``configure(parser)`` (adds its
arguments) and ``run(args) -> int``. Modules are imported only when their command is
used, so ``curate audit`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import textwrap

from clipcurate.pipelines.errors import UserError

COMMANDS: dict[str, str] = {
    "run": "clipcurate.pipelines.run_cli",
    "demo": "clipcurate.curation.demo",
    "sampleweb": "clipcurate.curation.sampleweb_cli",
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

# In workflow order (try, prepare models and lists, curate, inspect, share, train on it):
# the top-level --help lists the commands in this order, one line each.
SUMMARIES: dict[str, str] = {
    "demo": "start the local sample web and run the demo recipe end to end",
    "sampleweb": "serve a demo's sample web again, so its recipes can be re-run",
    "metadata": "build or inspect MetaCLIP metadata entry lists",
    "filter-model": "train the DFN filter model that clip_score scores pairs with",
    "heads": "train or show a head (NSFW, aesthetic, ...) for clip_heads",
    "run": "download, filter, dedup and balance an input list into shards",
    "retry": "re-fetch only the transiently failed samples of a finished run",
    "stats": "print a run's key numbers (JSON with --json)",
    "audit": "write an HTML report with plots of a run and each stage's effect",
    "index": "build a faiss index over a run's CLIP image embeddings",
    "search": "a run's samples nearest a text or an image, as an HTML page",
    "export": "write a run as webdataset tars or a DataComp uid subset file",
    "train": "train a contrastive (CLIP/SigLIP) model on output shards",
    "eval": "zero-shot accuracy and retrieval of a checkpoint on labeled data",
    "ablate": "compare recipe variants by training on each, equal samples seen",
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="clipcurate: turn web image-text pairs into curated CLIP training shards.",
        epilog=_command_list() + "\n\nRun 'curate COMMAND --help' for a command's options. Example: curate demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def _command_list() -> str:
    """The commands in workflow order, a line each (wrapped under its own column only
    on a narrow terminal)."""
    names = [*(name for name in SUMMARIES if name in COMMANDS), *(name for name in COMMANDS if name not in SUMMARIES)]
    column = max(map(len, names)) + 4
    width = max(shutil.get_terminal_size().columns, column + 20)
    lines = ["commands, in workflow order:"]
    for name in names:
        lines += textwrap.wrap(SUMMARIES.get(name, ""), width, initial_indent=f"  {name:<{column - 2}}",
                               subsequent_indent=" " * column) or [f"  {name}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The ``curate`` entry point. A reader that closes the pipe early (``curate stats
    --json | head``) ends the command quietly, as ``head`` expects, not with a traceback."""
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # here, so a closed pipe is caught below, not at interpreter exit
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """Python's recipe (``signal`` docs, "Note on SIGPIPE"): point stdout at devnull so
    the flush at exit does not fail again; 141 = 128 + SIGPIPE, what a shell reports."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _dispatch(argv: list[str] | None) -> int:
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
