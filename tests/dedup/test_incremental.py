"""Incremental curation end to end (issue 16): a release, then a second pool overlapping
it by re-hosted copies, re-encodes, a reposted pair, a re-crawled pair, a blocked URL and
blocked image hashes. The second run keeps only genuinely new pairs, names the earlier
uid of every duplicate, refuses every blocked item and never touches the release."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.dedup.perceptual import image_hash
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.release import open_context
from clipcurate.pipelines.runner import RunOptions, run_fingerprint, run_pipeline
from clipcurate.pipelines.stage import make_uid

DEDUP = [{"dedup_exact": {}}, {"dedup_minhash": {}}, {"dedup_perceptual": {}}]


def caption(rng, words) -> str:
    return " ".join(rng.choice(words, 12, replace=False))


def tree_digest(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_pool_against_release(ray_local, tmp_path, images):
    rng = np.random.default_rng(3)
    words = [f"word{i}" for i in range(3000)]
    (tmp_path / "entries.json").write_text(json.dumps(words))
    STAGES = [*DEDUP, {"metaclip": {"metadata": str(tmp_path / "entries.json"), "t": 1000}}]
    release_captions = [caption(rng, words) for _ in range(6)]
    release_urls = [f"http://old.test/{i}.jpg" for i in range(6)]
    pq.write_table(pa.table({"url": release_urls, "caption": release_captions,
                             "image": [images.png(i) for i in range(6)]}), tmp_path / "crawl1.parquet")
    options = RunOptions(progress=False, num_cpus=2)
    recipe, stages = parse_recipe({"name": "rel", "stages": STAGES})
    release = tmp_path / "release-1"
    first = run_pipeline(recipe, stages, [str(tmp_path / "crawl1.parquet")], str(release), options)
    assert first["totals"]["kept"] == 6
    before = tree_digest(release)
    old = [make_uid(u, c) for u, c in zip(release_urls, release_captions)]

    near_blocked = image_hash(images.png(41), "phash")
    blocklist = tmp_path / "takedowns.txt"
    blocklist.write_text(f"url:http://new.test/taken-down.jpg\nsha256:{hashlib.sha256(images.png(40)).hexdigest()}\n"
                         f"phash:{near_blocked:016x}\n")
    reposted = release_captions[1].split()
    reposted[5] = "changed"
    new_captions = [caption(rng, words) for _ in range(4)]
    rows = [  # (url, caption, image, expected reason or None)
        ("http://cdn.test/0.jpg", release_captions[0], images.png(0), f"dedup_exact:duplicate_of_release={old[0]}"),
        ("http://new.test/1.jpg", " ".join(reposted), images.jpeg(1, 90), f"dedup_minhash:duplicate_of_release={old[1]}"),
        ("http://new.test/2.jpg", new_captions[3], images.jpeg(2, 90), f"dedup_perceptual:duplicate_of_release={old[2]}"),
        (release_urls[3], release_captions[3], images.png(3), f"dedup_exact:duplicate_of_release={old[3]}"),  # re-crawled
        ("http://new.test/taken-down.jpg", "a blocked pair", images.png(30), "blocklist:url"),
        ("http://new.test/40.jpg", "blocked bytes", images.png(40), "blocklist:sha256"),
        ("http://new.test/41.jpg", "blocked picture", images.jpeg(41, 85), f"blocklist:phash={near_blocked:016x}"),
        ("http://new.test/60.jpg", new_captions[0], images.png(60), None),
        ("http://new.test/61.jpg", new_captions[1], images.png(61), None),
        ("http://new.test/62.jpg", new_captions[2], images.png(62), None),
    ]
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows],
                             "image": [r[2] for r in rows]}), tmp_path / "crawl2.parquet")
    raw = {"name": "incremental", "stages": STAGES, "against": [str(release)], "blocklist": [str(blocklist)]}
    recipe, stages = parse_recipe(raw)
    out = tmp_path / "release-2"
    manifest = run_pipeline(recipe, stages, [str(tmp_path / "crawl2.parquet")], str(out), options)

    uids = [make_uid(r[0], r[1]) for r in rows]
    assert uids[3] == old[3]  # the same url + caption: the same uid as the release's row
    rejects = dict(zip(*pq.read_table(out / "rejects", columns=["uid", "reject"]).to_pydict().values()))
    assert rejects == {u: r[3] for u, r in zip(uids, rows) if r[3] is not None}
    assert sorted(pq.read_table(out / "shards").column("uid").to_pylist()) == sorted(uids[7:])
    assert tree_digest(release) == before  # the release is only read
    assert manifest["against"][0]["release"] == str(release)
    summaries = {s["name"]: s.get("summary", {}) for s in manifest["stages"]}
    assert summaries["dedup_exact"]["duplicates_of_release"] == {str(release): 2}
    assert (out / "_work" / "against").is_dir() is False  # the release's shards held every hash: nothing derived

    # another release is another run: a finished output refuses it, and the fingerprint
    # changes from the first global stage on (the blocklist before it keeps its work)
    other = run_fingerprint(recipe, stages, [str(tmp_path / "crawl2.parquet")],
                            open_context([str(out)], cache=None))
    assert other["stages"][0] == manifest["fingerprint"]["stages"][0]
    assert all(a != b for a, b in zip(other["stages"][1:], manifest["fingerprint"]["stages"][1:]))
    recipe_b, stages_b = parse_recipe({**raw, "against": [str(out)]})
    with pytest.raises(UserError, match="already holds a finished run"):
        run_pipeline(recipe_b, stages_b, [str(tmp_path / "crawl2.parquet")], str(out), options)
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]

    # the audit says what the new crawl added, what came back and what was blocked
    from clipcurate.curation.audit.report import write_report

    report = write_report(out, samples=2, per_reason=1)
    against = report.stats["against"]
    assert (against["kept_new"], against["union_rows"], against["came_back"]) == (3, 9, 4)
    assert against["came_back_by_stage"] == {"dedup_exact": 2, "dedup_minhash": 1, "dedup_perceptual": 1}
    assert against["blocked_by_reason"] == {"blocklist:url": 1, "blocklist:sha256": 1, "blocklist:phash": 1}
    assert against["same_pair_recrawled"] == 1
    entries = against["metaclip"]
    assert entries["continued_from"][0]["release"] == str(release)
    assert entries["entries_covered_union"] >= entries["entries_covered_release"] + entries["entries_new"] > 0
    assert "Against earlier releases" in report.index.read_text()
