"""`curate ablate` end to end on a tiny pool: every variant curated, trained and compared,
with the download and the CLIP scoring done once for all variants."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

import clipcurate.train.clip_model as clip_model_module
from clipcurate.curation.ablate import load_experiment, plan_variants, run_ablation
from clipcurate.curation.pools import make_pool
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.runner import RunOptions
from clipcurate.curation.sampleweb import SampleWeb
from clipcurate.train.api import train


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ablate")
    pool = make_pool("fashion", 120, seed=3, eval_per_concept=4, trusted=64)
    pq.write_table(pool.eval_set, folder / "eval.parquet")
    (folder / "trusted" / "shards").mkdir(parents=True)
    pq.write_table(pool.trusted, folder / "trusted" / "shards" / "part-00000.parquet")
    train(folder / "trusted", "clip-tiny", output=folder / "filter", steps=2, batch_size=16, quiet=True)
    return folder, pool


def _experiment(folder, web, variants):
    web.write_pool(str(folder / "pool.parquet"))
    recipe = {"name": "tiny", "input": {"partition_size": 60}, "stages": [
        {"download": {"image_size": 64, "resize_mode": "center_crop", "allow_private_networks": True, "timeout": 5}},
        {"basic_filter": {"min_image_side": 64, "min_words": 1, "min_chars": 1}},
        {"clip_score": {"model": str(folder / "filter"), "keep_top": 0.8}},
        {"dedup_exact": {}}]}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    experiment = {"name": "tiny", "pool": "pool.parquet", "recipe": "recipe.yaml", "eval": "eval.parquet",
                  "train": {"steps": 2, "batch_size": 16, "seeds": [0]}, "truth": {}, "variants": variants}
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    return load_experiment(folder / "experiment.yaml")


def test_ablate_shares_download_and_scores(tiny_pool, monkeypatch):
    folder, pool = tiny_pool
    encoded: list[int] = []
    original = clip_model_module.Encoder.pairs  # what clip_score calls (eval embeds images alone)

    def counting(self, images, *args, **kwargs):
        encoded.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(clip_model_module.Encoder, "pairs", counting)
    with SampleWeb(samples=pool.samples) as web:
        experiment = _experiment(folder, web, {"top90": {"set": {"clip_score.keep_top": 0.9}},
                                               "no_dedup": {"remove": ["dedup_exact"]}})
        report = run_ablation(experiment, folder / "out", RunOptions(inline=True, progress=False), log=lambda *_: None)
        requests = {path: n for path, n in web.requests.items() if path != "/robots.txt"}

    variants = report["variants"]
    assert set(variants) == {"base", "top90", "no_dedup", "raw", "clean_oracle"}
    # every URL fetched exactly once for all five variants
    assert len(requests) == len(pool.samples) and max(requests.values()) == 1
    # CLIP scores computed once, over the downloaded pool: the threshold variants only threshold
    downloaded = variants["raw"]["kept"]
    assert sum(encoded) == downloaded
    # the shared prefix (download, scoring, basic_filter, clip_score) is reused, not rerun
    assert report["segments"]["reused"] >= 4
    # threshold variants differ as they should; the oracle keeps only clean pairs
    assert variants["top90"]["kept"] > variants["base"]["kept"]
    assert variants["clean_oracle"]["truth"]["clean_share_of_kept"] == 1.0
    assert variants["raw"]["truth"]["clean_kept"] == 1.0
    for name, variant in variants.items():
        assert variant["runs"][0]["zeroshot_top1"] is not None, name
        assert 0 < variant["kept"] <= downloaded
    funnel = [step["stage"] for step in variants["base"]["funnel"]]
    assert funnel == ["input", "download", "clip_score (scoring)", "basic_filter", "clip_score", "dedup_exact"]
    out = folder / "out"
    assert (out / "report" / "index.html").read_text().count("<tr") == 6
    assert (out / "report" / "accuracy_vs_kept.png").stat().st_size > 0
    best = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert best["stages"][0]["download"]["image_size"] == 64
    assert json.loads((out / "ablation.json").read_text())["best"] == report["best"]

    # a rerun resumes: nothing downloaded, scored or trained again
    encoded.clear()
    with SampleWeb(samples=pool.samples) as web:
        again = run_ablation(experiment, folder / "out", RunOptions(inline=True, progress=False), log=lambda *_: None)
        assert not [path for path in web.requests if path != "/robots.txt"]
    assert sum(encoded) == 0 and again["segments"]["computed"] == 0
    assert again["variants"]["base"]["zeroshot_top1"] == report["variants"]["base"]["zeroshot_top1"]


def test_variant_errors_name_the_variant(tiny_pool):
    folder, pool = tiny_pool
    with SampleWeb(samples=pool.samples[:5]) as web:
        experiment = _experiment(folder, web, {"bad": {"set": {"clip_scor.keep_top": 0.5}}})
    with pytest.raises(UserError, match="variant bad: set 'clip_scor.keep_top': no stage labelled 'clip_scor'"):
        plan_variants(experiment)
    with SampleWeb(samples=pool.samples[:5]) as web:
        experiment = _experiment(folder, web, {"bad": {"set": {"clip_score.keep_top": 2.0}}})
    with pytest.raises(UserError, match="variant bad.*keep_top"):
        plan_variants(experiment)


def test_truth_counts_a_picture_kept_through_any_copy(tmp_path):
    """Dedup keeps one copy of a picture, whichever: keeping the re-upload instead of the
    original loses no clean picture, and a second kept copy is kept noise."""
    import pyarrow as pa

    from clipcurate.curation.ablate import TruthSpec, _truth_figures

    def shards(name, rows):
        (tmp_path / name / "shards").mkdir(parents=True)
        kinds, pictures = zip(*rows)
        pq.write_table(pa.table({"sample_kind": list(kinds), "picture": list(pictures)}),
                       tmp_path / name / "shards" / "part-00000.parquet")
        return tmp_path / name

    pool = [("ok", "a"), ("duplicate", "a"), ("ok", "b"), ("duplicate", "b"), ("ok", "c"), ("mismatch", "m")]
    raw = shards("raw", pool)
    # a: only its re-upload kept; b: both copies kept; c: lost; the mismatch removed
    final = shards("final", [("duplicate", "a"), ("ok", "b"), ("duplicate", "b")])
    figures = _truth_figures(final, {"raw": {"final": str(raw)}}, TruthSpec())
    assert figures["clean_kept"] == round(2 / 3, 4) and figures["clean_rows_kept"] == round(1 / 3, 4)
    assert figures["mismatch_removed"] == 1.0
    assert figures["noise_removed"] == round(1 - 1 / 3, 4)  # noise: 2 re-uploads + 1 mismatch; 1 extra copy kept
    strict = _truth_figures(final, {"raw": {"final": str(raw)}}, TruthSpec(picture=None))
    assert strict["clean_kept"] == strict["clean_rows_kept"] == round(1 / 3, 4)
