"""The audit: numbers against the manifest and the parquet files, "not present" paths,
thumbnails, --compare, ``curate stats``, and a million rows in bounded time and memory."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipcurate.curation.audit.stats import compute_stats, open_run
from clipcurate.curation.audit.synthetic import write_synthetic_run
from clipcurate.curation.audit.thumbnails import THUMB_PX, _fetch_images
from clipcurate.pipelines.cli import main as curate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """20k rows through every synthetic stage, no images, several shard files."""
    out = tmp_path_factory.mktemp("audit") / "full"
    return write_synthetic_run(out, 20_000, seed=3, shard_rows=4_000)


def _read(out: Path, folder: str, columns: list[str]):
    import pyarrow as pa

    tables = [pq.read_table(p, columns=columns) for p in sorted((out / folder).glob("*.parquet"))]
    return pa.concat_tables(tables)


def test_stats_json_matches_manifest_and_parquet(full_run, capsys):
    out = full_run.out
    assert curate(["audit", str(out), "--strict"]) == 0
    stats = json.loads((out / "report" / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())

    # totals: manifest and a direct count over the files
    kept = _read(out, "shards", ["uid"])
    rejects = _read(out, "rejects", ["uid", "reject", "lang", "clip_score", "caption"])
    assert stats["totals"]["kept"] == manifest["totals"]["kept"] == kept.num_rows
    assert stats["totals"]["rejected"] == manifest["totals"]["rejected"] == rejects.num_rows
    assert stats["totals"]["input"] == manifest["input"]["rows"] == 20_000
    assert all(c["ok"] for c in stats["checks"]), stats["checks"]

    # reasons: detail stripped, counted from the files, equal to the manifest's stage reasons
    direct = Counter(r.split("=", 1)[0] for r in rejects.column("reject").to_pylist())
    assert stats["reasons"] == dict(direct)
    assert stats["reasons"] == full_run.reasons
    for mine, theirs in zip(stats["stages"], manifest["stages"]):
        assert (mine["name"], mine["in"], mine["kept"], mine["rejected"]) == \
               (theirs["name"], theirs["in"], theirs["kept"], theirs["rejected"])
        assert mine["rejected_in_files"] == theirs["rejected"]

    # dedup groups: the representative plus the rows naming it
    for stage in ("dedup_exact", "dedup_minhash"):
        details = [r.split("=", 1)[1] for r in rejects.column("reject").to_pylist()
                   if r.startswith(f"{stage}:duplicate_of=")]
        sizes = Counter(n + 1 for n in Counter(details).values())
        assert stats["dedup"][stage]["group_sizes"] == {str(k): v for k, v in sizes.items()}
        assert stats["dedup"][stage]["duplicates"] == len(details)
        assert set(full_run.kept_uids) >= {g["uid"] for g in stats["dedup"][stage]["largest"]} - set(
            rejects.column("uid").to_pylist())

    # languages: rejected rows counted directly; kept are all "en" by construction
    langs = Counter(rejects.column("lang").to_pylist())
    assert stats["lang"]["rejected"]["(not computed)"] == langs[None]
    assert stats["lang"]["rejected"]["fr"] == langs["fr"]
    assert stats["lang"]["kept"]["en"] == kept.num_rows

    # CLIP score: histograms hold every non-null score; summaries agree with numpy
    clip = stats["quantities"]["clip_score"]
    kept_scores = _read(out, "shards", ["clip_score"]).column("clip_score").to_numpy()
    rejected_scores = rejects.column("clip_score").drop_null().to_numpy()
    assert sum(clip["hist"]["kept"]) == kept_scores.size == clip["kept"]["count"]
    assert sum(clip["hist"]["rejected"]) == rejected_scores.size
    assert clip["kept"]["mean"] == pytest.approx(float(kept_scores.mean()), rel=1e-5)
    assert clip["kept"]["p50"] == pytest.approx(float(np.median(kept_scores)), rel=1e-5)
    assert clip["rejected"]["min"] == pytest.approx(float(rejected_scores.min()), rel=1e-6)

    # caption words, counted with Python's split
    words = [len(c.split()) for c in rejects.column("caption").to_pylist()]
    assert stats["quantities"]["caption_words"]["rejected"]["max"] == max(words)
    assert stats["quantities"]["caption_words"]["rejected"]["mean"] == pytest.approx(np.mean(words))

    # MetaCLIP: t from the stage summary, counts from the stats table
    entry_counts = pq.read_table(out / manifest["stats"]["metaclip.entry_counts"])
    meta = stats["metaclip"]
    assert meta["t"] == manifest["stages"][-1]["summary"]["t"]
    assert meta["matches_before"] == pc.sum(entry_counts["count_before"]).as_py()
    assert meta["head_entries"] == pc.sum(pc.greater(entry_counts["count_before"], meta["t"])).as_py()
    assert meta["top"][0]["count_before"] == pc.max(entry_counts["count_before"]).as_py()
    assert meta["curve"]["rank"][0] == 1 and meta["curve"]["rank"][-1] == entry_counts.num_rows

    # the page exists, names every section, and loads nothing from the network
    page = (out / "report" / "index.html").read_text()
    for heading in ("Funnel", "CLIP score", "Captions", "Image size", "Languages", "Duplicates",
                    "MetaCLIP", "Samples"):
        assert f"<h2>{heading}</h2>" in page
    assert "http://" not in page and "https://" not in page.replace("https://img.example.com", "")
    assert "<script" not in page
    assert "report/index.html" in capsys.readouterr().out


def test_checks_catch_a_manifest_that_disagrees_with_the_files(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "run", 3_000, seed=1, shard_rows=1_000)
    manifest = json.loads((run.out / "manifest.json").read_text())
    manifest["totals"]["kept"] += 5
    manifest["shards"][0]["rows"] += 5
    (run.out / "manifest.json").write_text(json.dumps(manifest))
    stray = run.out / "rejects" / "part-09999.parquet"
    stray.write_bytes((run.out / "rejects" / "part-00000.parquet").read_bytes())

    assert curate(["audit", str(run.out), "--strict"]) == 1
    failed = {c["name"] for c in json.loads((run.out / "report" / "stats.json").read_text())["checks"]
              if not c["ok"]}
    assert {"kept rows in shards = manifest", "shards files match manifest",
            "rejects files match manifest", "input = kept + rejected (manifest)", "uids unique"} <= failed
    assert "check failed" in capsys.readouterr().err


def test_optional_columns_absent_are_reported_not_present(tmp_path):
    run = write_synthetic_run(tmp_path / "bare", 2_000, seed=2, features=set())
    stats = compute_stats(run.out)
    assert "clip_score" not in stats["quantities"]
    assert stats["lang"] is None and stats["metaclip"] is None and stats["dedup"] == {}
    assert [s["name"] for s in stats["stages"]] == ["download", "basic"]
    assert curate(["audit", str(run.out)]) == 0
    page = (run.out / "report" / "index.html").read_text()
    for text in ("not present: no clip_score column", "not present: no lang column",
                 "not present: no dedup stage", "not present: no stats/&lt;label&gt;.entry_counts.parquet",
                 "not present: no other numeric stage columns"):
        assert text in page
    assert not list((run.out / "report" / "assets").glob("a_clip_score.png"))


def test_embedding_columns_scan_and_are_listed(tmp_path):
    run = write_synthetic_run(tmp_path / "emb", 1_000, seed=4, features={"clip_score", "embeddings"})
    stats = compute_stats(run.out)
    assert set(stats["embeddings"]) == {"clip_image_emb", "clip_text_emb"}
    assert "clip_image_emb" not in stats["quantities"]


def test_thumbnails_for_sampled_kept_rows_and_duplicates(tmp_path):
    run = write_synthetic_run(tmp_path / "img", 400, seed=5, images=True, shard_rows=60)
    assert curate(["audit", str(run.out), "--samples", "12", "--per-reason", "4"]) == 0
    report = run.out / "report"
    page = (report / "index.html").read_text()

    kept_sample = sorted(run.kept_uids)[:12]
    for uid in kept_sample:  # the smallest uids, each with a real thumbnail
        thumb = report / "assets" / "thumbs-a" / f"{uid}.jpg"
        assert f'src="assets/thumbs-a/{uid}.jpg"' in page
        with Image.open(thumb) as image:
            assert max(image.size) <= THUMB_PX and image.format == "JPEG"
    # rejects keep no image: caption cards, and a duplicate shows its kept original
    rejects = _read(run.out, "rejects", ["uid", "reject"])
    dup_rows = [r for r in rejects.column("reject").to_pylist() if ":duplicate_of=" in r]
    assert dup_rows and 'alt="kept original"' in page
    assert page.count('class="captioncard"') >= 4
    thumbs = {p.stem for p in (report / "assets" / "thumbs-a").glob("*.jpg")}
    assert set(kept_sample) <= thumbs and thumbs <= set(run.kept_uids)

    # image bytes come back for exactly the uids asked for
    asked = set(kept_sample[:3])
    fetched = _fetch_images(open_run(run.out), asked)
    assert set(fetched) == asked
    shard_bytes = {r["uid"]: r["image"] for r in _read(run.out, "shards", ["uid", "image"]).to_pylist()}
    assert all(fetched[u] == shard_bytes[u] for u in asked)
    with Image.open(io.BytesIO(fetched[kept_sample[0]])) as image:
        assert image.size[0] > 0


def test_compare_two_recipes_on_one_pool(tmp_path):
    strict = write_synthetic_run(tmp_path / "strict", 5_000, seed=7)
    loose = write_synthetic_run(tmp_path / "loose", 5_000, seed=7, features={"clip_score"})
    assert curate(["audit", str(strict.out), "--compare", str(loose.out)]) == 0
    cmp = json.loads((strict.out / "report" / "compare.json").read_text())
    a, b = set(strict.kept_uids), set(loose.kept_uids)
    overlap = cmp["overlap"]
    assert overlap["kept_both"] == len(a & b)
    assert overlap["kept_only_a"] == len(a - b) and overlap["kept_only_b"] == len(b - a)
    assert sum(overlap["only_b_rejected_in_a_by"].values()) <= len(b - a)
    assert "language:lang_not_allowed" in overlap["only_b_rejected_in_a_by"]
    assert cmp["other"]["totals"]["kept"] == len(b)
    page = (strict.out / "report" / "index.html").read_text()
    assert "Audit: strict vs loose" in page and 'src="assets/b_funnel.png"' in page
    # the single-run stats.json stays the first run's
    assert json.loads((strict.out / "report" / "stats.json").read_text())["totals"]["kept"] == len(a)


def test_curate_stats_json_and_text(full_run, capsys):
    assert curate(["stats", str(full_run.out), "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    manifest = full_run.manifest
    assert numbers["totals"]["kept"] == manifest["totals"]["kept"]
    assert numbers["totals"]["rejected"] == manifest["totals"]["rejected"]
    assert [s["rejected"] for s in numbers["stages"]] == [s["rejected"] for s in manifest["stages"]]
    assert numbers["metaclip_t"] == manifest["stages"][-1]["summary"]["t"]
    assert numbers["checks_ok"] is True

    assert curate(["stats", str(full_run.out)]) == 0
    text = capsys.readouterr().out
    assert f"{manifest['totals']['kept']:,} kept" in text and "dedup_minhash" in text

    assert curate(["stats", str(full_run.out / "missing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_a_million_rows_in_under_a_minute_and_bounded_memory(tmp_path):
    """Statistics from columns only: 1,000,000 rows (no images) audited in a subprocess.
    Its cost is counted in CPU seconds (a counter), not wall time, which a loaded machine
    stretches: under a minute on 2 cores is under 120 CPU seconds."""
    run = write_synthetic_run(tmp_path / "million", 1_000_000, seed=11)
    # peak RSS by polling the child (its own ru_maxrss would include this forked parent's pages)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen([sys.executable, "-m", "clipcurate.pipelines.cli", "audit", str(run.out), "--strict"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    watched = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, stderr = child.communicate(timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak_mib = peak / 2**20
    assert child.returncode == 0, stderr[-2000:]
    print(f"1M-row audit: {cpu_s:.1f} CPU s, peak RSS {peak_mib:.0f} MiB")
    assert cpu_s < 120
    assert peak_mib < 2048  # "well under 4 GiB"
    stats = json.loads((run.out / "report" / "stats.json").read_text())
    assert stats["totals"]["input"] == 1_000_000
    assert stats["totals"]["kept"] == run.manifest["totals"]["kept"]


def test_shards_with_differing_schemas_scan_together(tmp_path):
    """A shard where a stage column is all null (typed null) or absent still scans with the rest."""
    import pyarrow as pa

    run = write_synthetic_run(tmp_path / "mixed", 2_000, seed=6, shard_rows=500)
    first = run.out / "shards" / "part-00000.parquet"
    table = pq.read_table(first)
    table = table.set_column(table.schema.get_field_index("lang"), "lang", pa.nulls(table.num_rows))
    pq.write_table(table.drop_columns(["cat_has_action"]), first)
    manifest = json.loads((run.out / "manifest.json").read_text())
    manifest["shards"][0]["rows"] = table.num_rows
    (run.out / "manifest.json").write_text(json.dumps(manifest))
    stats = compute_stats(run.out)
    assert stats["totals"]["kept"] == run.manifest["totals"]["kept"]
    assert stats["lang"]["kept"]["(not computed)"] == table.num_rows
    assert stats["quantities"]["cat_has_action"]["kept"]["count"] == run.manifest["totals"]["kept"] - table.num_rows


@pytest.mark.parametrize("emptied", ["shards", "rejects"])
def test_a_run_with_nothing_kept_or_nothing_rejected(tmp_path, emptied):
    run = write_synthetic_run(tmp_path / "edge", 400, seed=8)
    for path in (run.out / emptied).glob("*.parquet"):
        path.unlink()
    manifest = json.loads((run.out / "manifest.json").read_text())
    side = "kept" if emptied == "shards" else "rejected"
    manifest[emptied] = []
    manifest["totals"][side] = 0
    manifest["totals"]["input"] = manifest["totals"]["kept"] + manifest["totals"]["rejected"]
    (run.out / "manifest.json").write_text(json.dumps(manifest))
    assert curate(["audit", str(run.out)]) == 0
    stats = json.loads((run.out / "report" / "stats.json").read_text())
    assert stats["totals"][side] == 0
    assert stats["totals"]["input"] == manifest["totals"]["input"]
    cards = (run.out / "report" / "index.html").read_text()
    assert ("no kept rows" in cards) == (emptied == "shards")
