"""``curate metadata``: build or inspect MetaCLIP metadata entry lists."""

from __future__ import annotations

import argparse
import json

from clipcurate.pipelines.errors import UserError

HELP = (
    "Build a MetaCLIP metadata entry list (numbers 0-99, WordNet synset names, frequent "
    "unigrams and high-PMI bigrams of a caption corpus), or inspect one against captions. "
    "Example: curate metadata build --captions captions.parquet --output entries.json "
    "--min-count 100 --min-pmi 30"
)


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = commands.add_parser(
        "build", help="build an entry list (JSON) following the MetaCLIP paper's recipe",
        description="Entries, in order, first occurrence wins: the numbers 0-99, WordNet synset "
                    "names, unigrams with count >= --min-count and bigrams with PMI >= --min-pmi "
                    "counted on --captions, then --extra lists (e.g. Wikipedia titles if you have "
                    "them: the paper used English Wikipedia n-grams and titles, not reachable offline). "
                    "The paper's thresholds (100, 30) assume a Wikipedia-size corpus; lower them "
                    "for small caption sets.")
    build.add_argument("--captions", nargs="*", default=[], metavar="FILE",
                       help="caption corpus: parquet files (column --column) or text files, one caption per line")
    build.add_argument("--column", default="caption", help="caption column of parquet files (default: caption)")
    build.add_argument("--output", required=True, help="entry list to write (JSON list)")
    build.add_argument("--wordnet", action=argparse.BooleanOptionalAction, default=True,
                       help="add WordNet synset names (default: on)")
    build.add_argument("--wordnet-all-lemmas", action="store_true",
                       help="add every WordNet lemma name instead of synset names only")
    build.add_argument("--wordnet-dir", default="/usr/share/wordnet",
                       help="WordNet 3.0 database files (Debian wordnet-base; default: /usr/share/wordnet); "
                            "'' uses nltk's installed wordnet corpus")
    build.add_argument("--cache-dir", default=None,
                       help="where the nltk copy of WordNet is kept (default: ~/.cache/clipcurate)")
    build.add_argument("--numbers", action=argparse.BooleanOptionalAction, default=True,
                       help="add the numbers 0-99 (default: on, as the paper)")
    build.add_argument("--min-count", type=int, default=100, metavar="K",
                       help="keep unigrams seen at least K times (default: 100, the paper on Wikipedia)")
    build.add_argument("--min-pmi", type=float, default=30.0, metavar="P",
                       help="keep bigrams with PMI (log2) at least P (default: 30, the paper on Wikipedia)")
    build.add_argument("--min-bigram-count", type=int, default=1, metavar="N",
                       help="score only bigrams seen at least N times (default: 1, as the paper)")
    build.add_argument("--no-bigrams", action="store_true", help="skip bigrams")
    build.add_argument("--extra", nargs="*", default=[], metavar="FILE",
                       help="more entry lists to add (JSON list or one entry per line)")
    build.add_argument("--max-entries", type=int, default=None,
                       help="stop at this many entries (the paper: 500000)")

    info = commands.add_parser("info", help="size of an entry list, and with --captions its coverage",
                               description="Print how many entries a list has; with --captions, how many "
                                           "captions match at least one entry, the most matched entries, "
                                           "and the tail fraction of a given t (MetaCLIP 2 t_to_p).")
    info.add_argument("entries", help="entry list (JSON list or one entry per line)")
    info.add_argument("--captions", nargs="*", default=[], metavar="FILE",
                      help="parquet (column --column) or text files to match")
    info.add_argument("--column", default="caption", help="caption column of parquet files (default: caption)")
    info.add_argument("--t", type=int, default=20_000, help="t for the tail fraction (default: 20000)")
    info.add_argument("--top", type=int, default=10, help="how many of the most matched entries to show")
    info.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        return _build(args)
    return _info(args)


def _build(args: argparse.Namespace) -> int:
    from clipcurate.curation import metadata

    if args.min_count < 1:
        raise UserError("--min-count must be at least 1")
    sources: list[tuple[str, list[str]]] = []
    if args.numbers:
        sources.append(("numbers", metadata.numbers_entries()))
    if args.wordnet:
        sources.append(("wordnet", metadata.wordnet_entries(
            all_lemmas=args.wordnet_all_lemmas, wordnet_dir=args.wordnet_dir, cache_dir=args.cache_dir)))
    if args.captions:
        unigrams, bigrams = metadata.count_ngrams(metadata.read_corpus(args.captions, column=args.column))
        sources.append(("unigrams", metadata.unigram_entries(unigrams, args.min_count)))
        if not args.no_bigrams:
            sources.append(("bigrams", metadata.bigram_entries(
                unigrams, bigrams, args.min_pmi, min_bigram_count=args.min_bigram_count)))
    for path in args.extra:
        sources.append((f"extra:{path}", metadata.load_entries(path)))
    if not sources:
        raise UserError("nothing to build from: enable --wordnet or --numbers, or give --captions/--extra")
    entries, added = metadata.merge_entries(sources, max_entries=args.max_entries)
    metadata.save_entries(entries, args.output)
    for name, count in added.items():
        print(f"{name}: +{count}")
    print(f"{len(entries)} entries -> {args.output}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import numpy as np
    import pyarrow as pa

    from clipcurate.curation import metadata
    from clipcurate.curation.metaclip import t_to_p

    entries = metadata.load_entries(args.entries)
    report: dict = {"entries": len(entries)}
    if args.captions:
        corpus = metadata.read_corpus(args.captions, column=args.column).collect()
        matcher = metadata.EntryMatcher(entries)
        counts = np.zeros(len(entries), dtype=np.int64)
        matched = 0
        texts = corpus.get_column("text").to_arrow().cast(pa.string())
        for start in range(0, len(texts), 100_000):
            lists = matcher.match(texts.slice(start, 100_000))
            values = lists.flatten().to_numpy(zero_copy_only=False)
            np.add.at(counts, values, 1)
            matched += int(np.count_nonzero(np.diff(lists.offsets.to_numpy())))
        top = np.argsort(-counts, kind="stable")[: args.top]
        report.update(
            captions=corpus.height,
            matched=matched,
            entries_matched=int((counts > 0).sum()),
            t=args.t,
            tail_fraction=t_to_p(counts, args.t),
            top=[{"entry": entries[i], "count": int(counts[i])} for i in top if counts[i] > 0],
        )
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(f"entries: {report['entries']}")
    if "captions" in report:
        share = report["matched"] / max(report["captions"], 1)
        print(f"captions: {report['captions']}  matched: {report['matched']} ({share:.1%})  "
              f"entries matched: {report['entries_matched']}")
        print(f"tail fraction at t={report['t']}: {report['tail_fraction']:.3f}")
        for item in report["top"]:
            print(f"  {item['count']:>10}  {item['entry']}")
    return 0
