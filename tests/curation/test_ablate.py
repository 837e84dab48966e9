"""`curate ablate` end to end on a tiny pool: every variant curated, trained and compared,
with the download and the CLIP scoring done once for all variants."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

import clipcurate.train.clip_model as clip_model_module
from clipcurate.curation.ablate import ORACLE, _summarise, choose_best, load_experiment, plan_variants, run_ablation
from clipcurate.curation.ablate_report import LABEL_WIDTH, accuracy_figure, summary_table, write_report
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


def _experiment(folder, web, variants, model=None):
    web.write_pool(str(folder / "pool.parquet"))
    recipe = {"name": "tiny", "input": {"partition_size": 60}, "stages": [
        {"download": {"image_size": 64, "resize_mode": "center_crop", "allow_private_networks": True, "timeout": 5}},
        {"basic_filter": {"min_image_side": 64, "min_words": 1, "min_chars": 1}},
        {"clip_score": {"model": model or str(folder / "filter"), "keep_top": 0.8}},
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
    monkeypatch.setenv("CLIPCURATE_FILTER_MODEL", str(folder / "filter"))
    with SampleWeb(samples=pool.samples) as web:
        experiment = _experiment(folder, web, {"top90": {"set": {"clip_score.keep_top": 0.9}},
                                               "no_dedup": {"remove": ["dedup_exact"]}},
                                 model="${CLIPCURATE_FILTER_MODEL}")
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
    if report["best"] != "raw":
        assert best["stages"][2]["clip_score"]["model"] == "${CLIPCURATE_FILTER_MODEL}"
    assert str(folder / "filter") not in (out / "best_recipe.yaml").read_text()
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


def test_best_recipe_keeps_the_base_recipes_env_references(tiny_pool, tmp_path, monkeypatch):
    """The variants run with ``${VAR}`` expanded; the written recipe keeps the reference,
    so it runs on the next machine too, and expands to what ran here."""
    from clipcurate.pipelines.recipe import load_recipe

    folder, pool = tiny_pool
    monkeypatch.setenv("CLIPCURATE_FILTER_MODEL", str(folder / "filter"))
    with SampleWeb(samples=pool.samples[:5]) as web:
        experiment = _experiment(folder, web, {"top90": {"set": {"clip_score.keep_top": 0.9}}},
                                 model="${CLIPCURATE_FILTER_MODEL}")
    planned = {p.name: p for p in plan_variants(experiment)}
    assert planned["top90"].recipe["stages"][2]["clip_score"]["model"] == str(folder / "filter")
    variants = {name: _variant(0.5 if name == "top90" else 0.4, recipe=p.recipe, recipe_as_written=p.written)
                for name, p in planned.items()}
    write_report(_report(variants), tmp_path)
    text = (tmp_path / "best_recipe.yaml").read_text()
    assert "model: ${CLIPCURATE_FILTER_MODEL}" in text and str(folder / "filter") not in text
    assert "keep_top: 0.9" in text
    _, stages = load_recipe(tmp_path / "best_recipe.yaml")
    assert [s.config.model_dump() for s in stages] == [s.config.model_dump() for s in planned["top90"].stages]


def _variant(top1, *, spread=None, kept=50, **extra):
    return {"kept": kept, "kept_fraction": kept / 100, "zeroshot_top1": top1, "seed_spread": spread,
            "seeds_measured": 1 if spread is None else 2, "recipe": {"stages": []}, **extra}


def _report(variants):
    choice = choose_best(variants)
    return {"experiment": {"name": "t", "eval": "eval.parquet",
                           "train": {"model": "clip-tiny", "steps": 2, "batch_size": 16, "seeds": [0]}},
            "pool_rows": 100, "variants": variants, "segments": {"computed": 1, "reused": 0}, "wall_s": 1.0,
            "choice": choice, "best": choice["best"]}


def test_one_seed_shows_no_spread(tmp_path):
    one = _summarise([{"zeroshot_top1": 0.5}])
    assert one == {"zeroshot_top1": 0.5, "seed_spread": None, "seeds_measured": 1}
    two = _summarise([{"zeroshot_top1": 0.5}, {"zeroshot_top1": 0.3}])
    assert two["seed_spread"] == 0.2 and two["seeds_measured"] == 2

    report = _report({"base": _variant(0.5), "raw": _variant(0.3)})
    table = summary_table(report)
    assert "0.0000" not in table and table.splitlines()[1].endswith("0.5000       -")
    write_report(report, tmp_path)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "±" not in page.split("<table>")[1] and "0.5000 (1 seed)" in page
    assert "spread" not in (tmp_path / "best_recipe.yaml").read_text().split("\n", 3)[3]

    measured = _report({"base": _variant(0.5, spread=0.02), "raw": _variant(0.3, spread=0.04)})
    assert summary_table(measured).splitlines()[1].endswith("0.5000  0.0200")
    write_report(measured, tmp_path)
    assert "0.5000 ± 0.0100" in (tmp_path / "report" / "index.html").read_text()


def test_ties_are_reported_as_ties(tmp_path):
    variants = {"base": _variant(0.4), "top90": _variant(0.5), "no_dedup": _variant(0.5), "raw": _variant(0.3),
                ORACLE: _variant(0.9)}
    choice = choose_best(variants)
    assert choice["best"] == "top90" and choice["tied"] == ["top90", "no_dedup"]  # the oracle is not a candidate
    report = _report(variants)
    line = "best: top90, tied at top-1 0.5000 with no_dedup (the first in the experiment's order wins"
    assert summary_table(report).splitlines()[-1].startswith(line)
    write_report(report, tmp_path)
    assert line in (tmp_path / "best_recipe.yaml").read_text()
    assert (tmp_path / "report" / "index.html").read_text().count('class="best"') == 2
    alone = choose_best({"base": _variant(0.4), "raw": _variant(0.3)})
    assert alone == {"best": "base", "by": "zeroshot_top1", "zeroshot_top1": 0.4, "tied": [], "rule": None}
    assert summary_table(_report({"base": _variant(0.4), "raw": _variant(0.3)})).endswith("\nbest: base")


def test_plot_labels_do_not_overlap():
    """Long variant names on nearly equal results (where labels next to points collided):
    every text box of the figure is apart from every other and inside the figure."""
    from matplotlib.text import Text

    names = [f"clip_score_keep_top_0.{i}_with_semantic_dedup_after_perceptual_and_language_filter" for i in range(6)]
    names += ["base", "raw", ORACLE]
    variants = {n: _variant(0.42 + i / 1000, spread=0.01 if i % 2 else None, kept=40 + i % 3)
                for i, n in enumerate(names)}
    fig = accuracy_figure(_report(variants))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    labels = [t for t in texts if t.get_text().replace("\n", "") in names]
    assert sorted(t.get_text().replace("\n", "") for t in labels) == sorted(names)  # every name, whole
    assert all(len(line) <= LABEL_WIDTH for t in labels for line in t.get_text().split("\n"))
    boxes = [t.get_window_extent(renderer) for t in texts]
    figure = fig.bbox
    for i, box in enumerate(boxes):
        assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and figure.y0 <= box.y0 and box.y1 <= figure.y1, \
            texts[i].get_text()
        for j in range(i):
            assert not box.overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
