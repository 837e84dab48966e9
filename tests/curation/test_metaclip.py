"""MetaCLIP balancing: matching in prepare, distributed counts in fit, deterministic keep draws."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray
from pydantic import ValidationError

from clipcurate.curation.metaclip import MetaClipBalance, entry_probs, p_to_t, t_to_p
from clipcurate.pipelines.writer import kept_rows
from clipcurate.pipelines.stage import make_uid

N_ENTRIES = 2000
N_CAPTIONS = 100_000
T = 300


@pytest.fixture(scope="module")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    yield


@pytest.fixture(scope="module")
def metadata_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("metaclip") / "entries.json"
    entries = [f"thing{i}" for i in range(N_ENTRIES - 2)] + ["hot dog", "dog"]
    path.write_text(json.dumps(entries))
    return str(path)


@pytest.fixture(scope="module")
def pool(metadata_file):
    """100k captions with 1-3 Zipf-distributed entries each (heads co-occur with tails),
    2% with none; matched by the stage's prepare."""
    rng = np.random.default_rng(7)
    ranks = np.minimum(rng.zipf(1.3, size=(N_CAPTIONS, 3)) - 1, N_ENTRIES - 3)
    sizes = rng.integers(1, 4, size=N_CAPTIONS)
    fillers = np.array(["a photo of", "the", "an image with", "close-up:", "nice"])
    captions = []
    for i in range(N_CAPTIONS):
        words = [f"thing{r}" for r in ranks[i, : sizes[i]]] if i % 50 else ["nothing", "here"]
        captions.append(f"{fillers[i % 5]} " + ", ".join(words) + ".")
    table = pa.table({
        "uid": [make_uid(f"http://x/{i}.jpg", c) for i, c in enumerate(captions)],
        "caption": captions,
        "reject": pa.nulls(N_CAPTIONS, pa.string()),
    })
    stage = MetaClipBalance(metadata=metadata_file, t=T)
    return stage.prepare(table)


def kept(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_null(table.column("reject")))


def fitted(metadata_file, table, **params) -> MetaClipBalance:
    stage = MetaClipBalance(metadata=metadata_file, **params)
    stage.fit(ray.data.from_arrow(kept(table)))
    return stage


def p_keep(lists: list[list[int]], counts: np.ndarray, t: int) -> np.ndarray:
    """MetaCLIP's probability in plain Python: 1 - prod(1 - min(1, t / count_e))."""
    return np.array([1.0 - math.prod(1.0 - min(1.0, t / counts[e]) for e in row) for row in lists])


# ------------------------------------------------------------------ matching


def test_prepare_matches_and_rejects_no_match(metadata_file):
    batch = pa.table({
        "uid": ["u1", "u2", "u3", "u4", "u5"],
        "caption": ["a hot dog, thing1.", "thing1 thing1 thing10", "Thing1 dogs", None, "thing2"],
        "image": [b"1", b"2", b"3", b"4", b"5"],
        "reject": [None, None, None, None, "basic_filter:too_short"],
    })
    out = MetaClipBalance(metadata=metadata_file).prepare(batch)
    hot_dog, dog = N_ENTRIES - 2, N_ENTRIES - 1
    assert out.column("metaclip_entries").to_pylist() == [[1, hot_dog, dog], [1, 10], [], [], None]
    assert out.column("metaclip_entries").type == pa.list_(pa.int32())
    assert out.column("reject").to_pylist() == [None, None, "metaclip:no_match", "metaclip:no_match",
                                                "basic_filter:too_short"]
    assert out.column("image").to_pylist() == [b"1", b"2", None, None, b"5"]
    assert out.column("uid").to_pylist() == batch.column("uid").to_pylist()


def test_prepare_on_pool_counts_like_plain_python(pool):
    lists = pool.column("metaclip_entries").to_pylist()
    captions = pool.column("caption").to_pylist()
    for i in (0, 1, 2, 49, 50, 99_999):
        words = {w.strip(",.") for w in captions[i].split()}
        want = sorted(int(w[5:]) for w in words if w.startswith("thing") and w[5:].isdigit())
        assert lists[i] == want
    reasons = pool.column("reject").to_pylist()
    assert reasons.count("metaclip:no_match") == N_CAPTIONS // 50


# ------------------------------------------------------------------ config and t


def test_config_validation(metadata_file):
    assert MetaClipBalance(metadata=metadata_file).config.t == 20_000
    assert MetaClipBalance(metadata=metadata_file, tail_fraction=0.2).config.tail_fraction == 0.2
    with pytest.raises(ValidationError, match="either t or tail_fraction"):
        MetaClipBalance(metadata=metadata_file, t=10, tail_fraction=0.2)
    with pytest.raises(ValidationError):
        MetaClipBalance(metadata=metadata_file, t=0)
    with pytest.raises(ValidationError):
        MetaClipBalance(metadata=metadata_file, tail_fraction=1.5)
    with pytest.raises(ValidationError):
        MetaClipBalance(metadata=metadata_file, unknown=1)


def test_t_and_tail_fraction_follow_metaclip2():
    counts = np.array([8, 1, 100, 2, 0, 1, 4])
    assert t_to_p(counts, 5) == pytest.approx(8 / 116)  # entries below 5 hold 1+1+2+4 of 116
    # sorted cumulative shares 0, 1, 2, 4, 8, 16, 116 (/116): closest to 0.1 is 8/116 -> t = 4
    assert p_to_t(counts, 0.1) == 4
    assert p_to_t(counts, 0.9) == 100
    assert entry_probs(counts, 4).tolist() == [0.5, 1.0, 0.04, 1.0, 1.0, 1.0, 1.0]


# ------------------------------------------------------------------ balancing


def test_balancing_matches_metaclip_probabilities(ray_session, metadata_file, pool):
    stage = fitted(metadata_file, pool, t=T)
    out = stage(pool)
    assert out.num_rows == pool.num_rows and out.column("uid").equals(pool.column("uid"))

    matched = kept(pool)
    lists = matched.column("metaclip_entries").to_pylist()
    counts = np.bincount(np.concatenate([np.array(r, dtype=np.int64) for r in lists]), minlength=N_ENTRIES)
    table = stage.stats()["entry_counts"]
    assert table.schema.names == ["entry_id", "entry", "count_before", "count_after"]
    assert table.column("count_before").to_numpy().tolist() == counts.tolist()
    assert table.column("entry").to_pylist()[-2:] == ["hot dog", "dog"]

    # total kept vs sum of P(keep): within 3 standard deviations (and within 1%)
    probs = p_keep(lists, counts, T)
    kept_mask = pc.is_null(out.filter(pc.is_null(pool.column("reject"))).column("reject")).to_numpy(zero_copy_only=False)
    expected, sd = probs.sum(), math.sqrt((probs * (1 - probs)).sum())
    assert abs(kept_mask.sum() - expected) <= 3 * sd
    assert abs(kept_mask.sum() - expected) <= 0.01 * expected
    assert (probs < 1).sum() > 30_000  # the cap really bites

    # per entry: kept count vs its own expectation (rows are independent Bernoullis)
    rows = np.repeat(np.arange(len(lists)), [len(r) for r in lists])
    flat = np.concatenate([np.array(r, dtype=np.int64) for r in lists])
    kept_e = np.bincount(flat[kept_mask[rows]], minlength=N_ENTRIES)
    mean_e = np.bincount(flat, weights=probs[rows], minlength=N_ENTRIES)
    var_e = np.bincount(flat, weights=(probs * (1 - probs))[rows], minlength=N_ENTRIES)
    z = np.abs(kept_e - mean_e) / np.sqrt(np.maximum(var_e, 1e-12))
    assert z[var_e > 0].max() < 5
    assert (kept_e[var_e == 0] == counts[var_e == 0]).all()  # tail-only entries keep every pair
    assert table.column("count_after").to_numpy().tolist() == kept_e.tolist()

    reasons = out.column("reject").to_pylist()
    assert reasons.count(None) == kept_mask.sum()
    assert reasons.count("metaclip:balanced_out") == len(lists) - kept_mask.sum()
    assert stage.summary() == {"t": T, "tail_fraction": t_to_p(counts, T), "entries": N_ENTRIES,
                               "entries_matched": int((counts > 0).sum()), "matched": len(lists),
                               "kept": int(kept_mask.sum()), "seed": 0}


def test_single_entry_captions_are_capped_at_t(ray_session, metadata_file):
    """With one entry per caption nothing carries over: each entry keeps <= t + 3 sqrt(t)."""
    rng = np.random.default_rng(3)
    entry = np.minimum(rng.zipf(1.4, size=N_CAPTIONS) - 1, N_ENTRIES - 1).astype(np.int32)
    table = pa.table({
        "uid": [f"{i:032x}" for i in range(N_CAPTIONS)],
        "reject": pa.nulls(N_CAPTIONS, pa.string()),
        "metaclip_entries": pa.ListArray.from_arrays(pa.array(np.arange(N_CAPTIONS + 1, dtype=np.int32)),
                                                     pa.array(entry)),
    })
    stage = fitted(metadata_file, table, t=T)
    out = stage(table)
    keep = pc.is_null(out.column("reject")).to_numpy(zero_copy_only=False)
    before = np.bincount(entry, minlength=N_ENTRIES)
    after = np.bincount(entry[keep], minlength=N_ENTRIES)
    assert (before > 3 * T).sum() >= 5
    assert (after <= T + 3 * math.sqrt(T)).all()
    assert (after[before <= T] == before[before <= T]).all()
    assert (after[before > 3 * T] >= T - 4 * math.sqrt(T)).all()


def test_same_kept_set_with_1_and_8_partitions(ray_session, metadata_file, pool):
    results = []
    for partitions in (1, 8):
        ds = ray.data.from_arrow(pool).repartition(partitions).materialize()
        stage = MetaClipBalance(metadata=metadata_file, t=T, seed=5)
        stage.fit(ds.map_batches(kept_rows, batch_format="pyarrow"))
        out = ds.map_batches(stage, batch_format="pyarrow", batch_size=4096)
        assert ds.num_blocks() == partitions
        uids = [u for b in out.map_batches(kept_rows, batch_format="pyarrow").iter_batches(batch_format="pyarrow")
                for u in b.column("uid").to_pylist()]
        results.append((sorted(uids), stage.summary(), stage.stats()["entry_counts"]))
    (uids1, summary1, stats1), (uids8, summary8, stats8) = results
    assert len(uids1) == summary1["kept"] > 10_000
    assert uids1 == uids8 and summary1 == summary8 and stats1.equals(stats8)
    # the same decisions inline, without Ray, from the same fitted state
    stage = MetaClipBalance(metadata=metadata_file, t=T, seed=5)
    stage.fit(ray.data.from_arrow(kept(pool)))
    assert sorted(kept(stage(pool)).column("uid").to_pylist()) == uids1


def test_seed_changes_draws_not_rates(ray_session, metadata_file, pool):
    a = kept(fitted(metadata_file, pool, t=T, seed=0)(pool)).column("uid").to_pylist()
    b = kept(fitted(metadata_file, pool, t=T, seed=1)(pool)).column("uid").to_pylist()
    assert set(a) != set(b)
    assert abs(len(a) - len(b)) < 0.03 * len(a)
    assert len(set(a) & set(b)) < 0.9 * len(a)


def test_t_from_tail_fraction(ray_session, metadata_file, pool):
    stage = fitted(metadata_file, pool, tail_fraction=0.25)
    counts = stage.stats()["entry_counts"].column("count_before").to_numpy()
    assert stage.summary()["t"] == p_to_t(counts, 0.25) > 1
    assert stage.summary()["tail_fraction"] == pytest.approx(t_to_p(counts, stage.summary()["t"]))


def test_fitted_stage_pickles_small_and_needs_fit(metadata_file, pool, ray_session):
    with pytest.raises(RuntimeError, match="fit"):
        MetaClipBalance(metadata=metadata_file)(pool.slice(0, 10))
    stage = fitted(metadata_file, pool.slice(0, 5000), t=20)
    blob = pickle.dumps(stage)
    assert len(blob) < 200_000  # entry probabilities, not the automaton
    clone = pickle.loads(blob)
    assert clone(pool.slice(0, 5000)).equals(stage(pool.slice(0, 5000)))


# ------------------------------------------------------------------ per-language lists (MetaCLIP 2)


def test_per_language_lists_and_thresholds(ray_session, tmp_path):
    paths = {}
    for name, entries in {"other": ["dog", "chien", "gato"], "en": ["dog", "cat", "red"],
                          "de": ["Hund", "Katze", "dog", "rot"]}.items():
        paths[name] = str(tmp_path / f"{name}.json")
        (tmp_path / f"{name}.json").write_text(json.dumps(entries))
    config = dict(metadata=paths["other"], lang_metadata={"en": paths["en"], "de": paths["de"]}, t=200)
    small = pa.table({
        "uid": ["a", "b", "c", "d", "e", "f"],
        "caption": ["a red dog", "ein Hund, dog", "un chien dog", "Hund", "gato", "red cat"],
        "lang": ["en", "de", "fr", "en", None, "en"],
        "reject": [None, None, None, None, None, "basic_filter:x"],
    })
    out = MetaClipBalance(**config).prepare(small)
    assert out.column("metaclip_entries").to_pylist() == [[0, 2], [0, 2], [0, 1], [], [2], None]
    assert out.column("reject").to_pylist()[3:] == ["metaclip:no_match", None, "basic_filter:x"]

    # a pool: 20k English rows (heavy head "dog"), 8k German, 4k other
    rng = np.random.default_rng(1)
    words = {"en": (["dog", "cat", "red"], [0.8, 0.15, 0.05]), "de": (["Hund", "Katze", "dog", "rot"], [0.5, 0.3, 0.1, 0.1]),
             "xx": (["dog", "chien", "gato"], [0.6, 0.3, 0.1])}
    rows = []
    for lang, n in (("en", 20_000), ("de", 8_000), ("xx", 4_000)):
        vocab, weights = words[lang]
        for i, word in enumerate(rng.choice(vocab, size=n, p=weights)):
            rows.append((f"{lang}-{i}", f"photo: {word}", lang))
    uids, captions, langs = zip(*rows)
    pool = pa.table({"uid": list(uids), "caption": list(captions), "lang": list(langs),
                     "reject": pa.nulls(len(rows), pa.string())})
    stage = MetaClipBalance(**config)
    prepared = stage.prepare(pool)
    stage.fit(ray.data.from_arrow(prepared).repartition(4))
    out = stage(prepared)

    table = stage.stats()["entry_counts"]
    got = {(r["lang"], r["entry"]): r["count_before"] for r in table.to_pylist()}
    for lang, label in (("en", "en"), ("de", "de"), ("xx", "other")):
        vocab, _ = words[lang]
        for word in vocab:
            assert got[(label, word)] == sum(1 for c, l in zip(captions, langs) if l == lang and c.endswith(f" {word}"))

    counts = {lang: table.filter(pc.equal(table.column("lang"), lang)).column("count_before").to_numpy()
              for lang in ("other", "en", "de")}
    p = t_to_p(counts["en"], 200)
    summary = stage.summary()
    assert summary["t"] == 200 and summary["tail_fraction"] == pytest.approx(p)
    assert summary["t_by_lang"] == {"other": p_to_t(counts["other"], p), "en": 200, "de": p_to_t(counts["de"], p)}
    assert summary["entries"] == 10 and summary["matched"] == len(rows)

    # each list balanced with its own t: kept per entry ~ min(count, t_lang)
    keep = pc.is_null(out.column("reject")).to_numpy(zero_copy_only=False)
    for lang, label in (("en", "en"), ("de", "de"), ("xx", "other")):
        t = summary["t_by_lang"][label]
        for word in words[lang][0]:
            mask = np.array([l == lang and c.endswith(f" {word}") for c, l in zip(captions, langs)])
            n = int(mask.sum())
            assert abs(int(keep[mask].sum()) - min(n, t)) <= 4 * math.sqrt(t) + 1
    assert table.column("count_after").to_numpy().sum() == int(keep.sum())


# ------------------------------------------------------------------ through the runner


def test_run_pipeline_writes_balanced_shards_and_entry_counts(ray_session, tmp_path, metadata_file, pool):
    """Through the engine on Ray: the stage ships to workers, matches there, fits once."""
    import pyarrow.parquet as pq

    from clipcurate.pipelines.recipe import parse_recipe
    from clipcurate.pipelines.runner import RunOptions, run_pipeline

    captions = pool.column("caption").to_pylist()[:6000]
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"url": [f"http://x/{i}.jpg" for i in range(6000)], "caption": captions}), source)
    recipe, stages = parse_recipe({"name": "metaclip-test", "input": {"partition_size": 1500},
                                   "stages": [{"metaclip": {"metadata": metadata_file, "t": 40, "seed": 3}}]})
    manifest = run_pipeline(recipe, stages, [str(source)], str(tmp_path / "out"),
                            RunOptions(progress=False, num_cpus=2))

    (entry,) = [s for s in manifest["stages"] if s["type"] == "metaclip"]
    kept = pq.read_table(tmp_path / "out" / "shards").column("uid").to_pylist()
    assert manifest["totals"]["input"] == 6000 == entry["in"]
    assert entry["kept"] == len(kept) == entry["summary"]["kept"]
    assert entry["reasons"]["metaclip:no_match"] == 120
    assert entry["reasons"]["metaclip:balanced_out"] == 6000 - 120 - len(kept)
    assert entry["summary"]["t"] == 40 and entry["summary"]["matched"] == 5880
    counts = pq.read_table(tmp_path / "out" / manifest["stats"]["metaclip.entry_counts"])
    assert counts.column("count_after").to_numpy().max() > 0
    # the same kept set as the stage run directly on the same uids
    table = pq.read_table(tmp_path / "out" / "shards", columns=["uid", "caption", "metaclip_entries"])
    stage = MetaClipBalance(metadata=metadata_file, t=40, seed=3)
    rejected = pq.read_table(tmp_path / "out" / "rejects", columns=["uid", "caption"])
    everything = pa.concat_tables([table.select(["uid", "caption"]), rejected])
    everything = stage.prepare(everything.append_column("reject", pa.nulls(6000, pa.string())))
    stage.fit(ray.data.from_arrow(kept_rows(everything)))
    assert sorted(kept_rows(stage(everything)).column("uid").to_pylist()) == sorted(kept)
