"""MetaCLIP matching speed: our stage vs a bare pyahocorasick loop vs the plain-Python rule.

Entries: every WordNet 3.0 lemma name (Debian wordnet-base index files, ~147k) — a
real vocabulary of the size MetaCLIP uses (500k). Captions: 100k synthetic captions of
Zipf-sampled lemmas with punctuation, tabs and repeats. All three matchers are checked
to return the same entry ids before timing counts.

    .venv/bin/python bench/metaclip.py [--captions 100000]

Last line: one JSON object; ``ratio`` = our stage's captions/s / the bare loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clipcurate.curation.metaclip import MetaClipBalance  # noqa: E402
from clipcurate.curation.metadata import cached_matcher, spacing  # noqa: E402


def wordnet_lemmas(folder: str = "/usr/share/wordnet") -> list[str]:
    names: dict[str, None] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(folder, f"index.{pos}"), encoding="utf-8") as handle:
            for line in handle:
                if not line.startswith("  "):
                    names.setdefault(line.split(" ", 1)[0].replace("_", " "), None)
    return list(names)


def make_captions(entries: list[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    seps = np.array([" ", " ", " ", ", ", ". ", "\t", "; ", "! ", " - ", "  "])
    ranks = np.minimum(rng.zipf(1.2, size=(n, 14)), len(entries)) - 1
    lengths = rng.integers(4, 15, size=n)
    sep = rng.integers(0, len(seps), size=(n, 14))
    captions = []
    for i in range(n):
        parts = []
        for j in range(lengths[i]):
            parts.append(entries[ranks[i, j]])
            parts.append(seps[sep[i, j]])
        captions.append("".join(parts).strip() + ".")
    return captions


def bare_loop(automaton, captions: list[str]) -> list[list[int]]:
    """MetaCLIP's substr_matching_ahocorasick.py loop, per caption."""
    out = []
    for caption in captions:
        out.append(sorted({entry_id for _, entry_id in automaton.iter(spacing(caption))}))
    return out


def reference(spaced_entries: list[str], captions: list[str]) -> list[list[int]]:
    """MetaCLIP's plain-Python rule: every entry tested against every caption."""
    out = []
    for caption in captions:
        text = spacing(caption)
        out.append([i for i, entry in enumerate(spaced_entries) if entry in text])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--reference-sample", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    entries = wordnet_lemmas()
    captions = make_captions(entries, args.captions)
    folder = tempfile.mkdtemp(prefix="bench-metaclip-")
    path = os.path.join(folder, "entries.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(entries, handle)

    started = time.perf_counter()
    matcher = cached_matcher(path)
    build_s = time.perf_counter() - started
    print(f"entries: {len(entries)}  captions: {len(captions)}  automaton build: {build_s:.2f}s")

    table = pa.table({"uid": [f"{i:032x}" for i in range(len(captions))], "caption": captions,
                      "reject": pa.nulls(len(captions), pa.string())})
    batches = [table.slice(s, args.batch_size) for s in range(0, table.num_rows, args.batch_size)]
    stage = MetaClipBalance(metadata=path)

    ours_s, bare_s = [], []
    for _ in range(args.repeats):  # interleaved, best of: the machine is shared
        started = time.perf_counter()
        prepared = [stage.prepare(b) for b in batches]
        ours_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        bare = bare_loop(matcher.automaton, captions)
        bare_s.append(time.perf_counter() - started)
    ours = [row for b in prepared for row in b.column("metaclip_entries").to_pylist()]
    assert ours == bare, "stage and bare loop disagree"

    sample = captions[: args.reference_sample]
    started = time.perf_counter()
    ref = reference([f" {e} " for e in entries], sample)
    ref_s = time.perf_counter() - started
    assert ref == ours[: len(sample)], "stage and plain-Python reference disagree"

    n = len(captions)
    ours_cps, bare_cps, ref_cps = n / min(ours_s), n / min(bare_s), len(sample) / ref_s
    matched = sum(1 for row in ours if row)
    mean_matches = sum(len(row) for row in ours) / n
    print(f"ours (stage.prepare, batches of {args.batch_size}): {ours_cps:,.0f} captions/s")
    print(f"bare pyahocorasick loop (MetaCLIP's):          {bare_cps:,.0f} captions/s")
    print(f"plain-Python reference ({len(sample)} captions):        {ref_cps:,.1f} captions/s")
    print(f"matched captions: {matched / n:.1%}, entries per caption: {mean_matches:.1f}")
    print(f"ours / bare: {ours_cps / bare_cps:.2f}x   ours / reference: {ours_cps / ref_cps:,.0f}x")
    result = {
        "bench": "metaclip_matching", "entries": len(entries), "captions": n,
        "batch_size": args.batch_size, "automaton_build_s": round(build_s, 3),
        "ours_captions_per_s": round(ours_cps), "bare_loop_captions_per_s": round(bare_cps),
        "reference_captions_per_s": round(ref_cps, 2), "reference_sample": len(sample),
        "ratio": round(ours_cps / bare_cps, 3), "ratio_vs_reference": round(ours_cps / ref_cps, 1),
        "identical": True,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
