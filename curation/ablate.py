"""Ablations: judge curation by the models trained on what it keeps.

DataComp's rule (Gadre et al., 2023): curation is compared by training the same model
at the same compute (samples seen) on each subset and evaluating it. An experiment
names one pool, a base recipe, variants of it, a labelled eval set and a training
budget; this module runs every variant, trains on each at equal samples seen over one
or more seeds, evaluates zero-shot (and retrieval), and writes one comparison.

Work shared by variants is done once, by content-keyed segments under ``OUT/cache``:

- the download runs once (its key: the pool's fingerprint and the download params);
- CLIP scores (and embeddings) run once per filter model over the downloaded pool;
  ``clip_score`` stages then find scores made by their model and only threshold them
  ("score once, filter many");
- every later stage is its own segment keyed by everything before it, so a variant
  re-runs only the stages after its first difference.

A segment is an ordinary run (``run_pipeline``) over the previous segment's shards,
so it resumes like one, and a finished segment is reused by every variant and every
rerun. Training results are cached the same way: interrupt and rerun resumes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipcurate.pipelines.errors import RecipeError, UserError
from clipcurate.pipelines.limits import read_json
from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines.readers import files_fingerprint
from clipcurate.pipelines.recipe import Recipe, expand_env, parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline

RAW = "raw"
ORACLE = "clean_oracle"


class TrainSpec(BaseModel):
    """The fixed training budget every variant gets (equal samples seen)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("clip-tiny", description="bundled config, open_clip name, JSON config or checkpoint dir")
    steps: int = Field(300, gt=0, description="optimizer steps; samples seen = steps x batch_size for every variant")
    batch_size: int = Field(128, gt=1)
    lr: float = Field(5e-4, gt=0)
    lock_text: bool = Field(False, description="LiT: keep a pretrained text tower frozen")
    seeds: list[int] = Field([0, 1], min_length=1, description="one training run per seed; the report gives the spread")
    templates: list[str] | None = Field(None, description="zero-shot prompt templates (default: the evaluator's)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (1 on a shared or loaded machine: "
                                "busy-waiting threads there cost more than they give)")


class TruthSpec(BaseModel):
    """A pool column with the known truth of each row, for clean/noise figures."""

    model_config = ConfigDict(extra="forbid")
    column: str = "sample_kind"
    clean: str = Field("ok", description="the value that marks a clean pair")
    mismatch: str = Field("mismatch", description="the value that marks a caption describing another picture")
    duplicate: str = Field("duplicate", description="the value that marks a re-upload of a clean pair's picture")
    picture: str | None = Field(
        "picture", description="optional column naming the picture a row shows (a re-upload shares its "
        "original's): dedup keeps one copy of each picture, and which copy is not a loss")


class Variant(BaseModel):
    """Changes to the base recipe's stages: replace them, set parameters, remove or add stages."""

    model_config = ConfigDict(extra="forbid")
    stages: list | None = Field(None, description="the whole stage list (replaces the base's)")
    set: dict[str, Any] = Field(default_factory=dict, description="'<stage label>.<param>': value")
    remove: list[str] = Field(default_factory=list, description="stage labels to drop")
    add: list[dict] = Field(default_factory=list,
                            description="stages to add: {name: params} appended, or with an 'after: <label>' key")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "ablation"
    pool: str | list[str] = Field(description="the URL + caption list (any `curate run` input)")
    recipe: str = Field(description="the base recipe (YAML)")
    eval: str = Field(description="labelled eval set (image, label), any layout `curate eval` reads")
    eval_class_names: str | None = Field(None, description="names of integer eval labels, one per line in label "
                                                           "order (not needed with a class_name column or ClassLabel)")
    retrieval: str | None = Field(None, description="held-out image + caption pairs for retrieval recall")
    train: TrainSpec = TrainSpec()
    truth: TruthSpec | None = None
    variants: dict[str, Variant] = Field(default_factory=dict)
    include_raw: bool = Field(True, description="also train on the downloaded pool, uncurated")
    include_oracle: bool = Field(True, description="with `truth`: also train on the clean pairs only")


@dataclass
class Planned:
    """A variant as built: its full recipe (raw dict, ``${VAR}`` expanded), validated
    stages, and the recipe as a file would write it (the base's ``${VAR}`` kept, so a
    written recipe does not pin one machine's paths)."""

    name: str
    recipe: dict
    stages: list
    segments: list[dict] = field(default_factory=list)
    written: dict | None = None


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment file; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        experiment = Experiment.model_validate(expand_env(raw, str(path)))
    except FileNotFoundError:
        raise UserError(f"{path}: experiment file not found") from None
    except (yaml.YAMLError, ValidationError) as err:
        raise UserError(f"{path}: {' '.join(str(err).split())[:300]}") from None
    here = path.parent

    def rel(value):
        if value is None or "://" in str(value) or os.path.isabs(str(value)):
            return value
        return str(here / value)

    pool = [rel(p) for p in experiment.pool] if isinstance(experiment.pool, list) else rel(experiment.pool)
    return experiment.model_copy(update={"pool": pool, "recipe": rel(experiment.recipe), "eval": rel(experiment.eval),
                                         "eval_class_names": rel(experiment.eval_class_names),
                                         "retrieval": rel(experiment.retrieval)})


def plan_variants(experiment: Experiment) -> list[Planned]:
    """The base recipe and every variant as full, validated recipes."""
    written = yaml.safe_load(Path(experiment.recipe).read_text(encoding="utf-8"))
    base = expand_env(written, experiment.recipe)
    planned = _variant_stages(experiment, [_entry(e) for e in base.get("stages", [])])
    as_written = _variant_stages(experiment, [_entry(e) for e in written.get("stages", [])])
    out = []
    for name, stages in planned.items():
        recipe = {**base, "name": f"{base.get('name', 'recipe')}:{name}", "stages": stages}
        try:
            _, built = parse_recipe(copy.deepcopy(recipe), source=f"variant {name}")
        except RecipeError as err:
            raise UserError(str(err)) from None
        written_recipe = {**written, "name": recipe["name"], "stages": as_written[name]}
        out.append(Planned(name, recipe, built, written=written_recipe))
    first = {json.dumps(p.recipe["stages"][:1], sort_keys=True) for p in out if p.stages}
    if len(first) > 1 and any(_name(p.recipe["stages"][0]) == "download" for p in out if p.stages):
        raise UserError("every variant must start with the same download stage (the pool is downloaded once)")
    return out


def _variant_stages(experiment: Experiment, entries: list[dict]) -> dict[str, list[dict]]:
    """Each variant's stage list from the base's ``entries`` (``base`` first, ``raw`` last)."""
    planned = {"base": entries}
    for name, variant in experiment.variants.items():
        planned[name] = _apply(entries, variant, name)
    if experiment.include_raw and entries and _name(entries[0]) == "download":
        planned.setdefault(RAW, entries[:1])
    return planned


def run_ablation(experiment: Experiment, output: str | Path, options: RunOptions | None = None,
                 log=print) -> dict:
    """Run every variant, train and evaluate on each, write ``OUT/ablation.json`` and the report."""
    from clipcurate.curation.ablate_report import write_report

    options = options or RunOptions(progress=False)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    variants = plan_variants(experiment)
    cache = Segments(out / "cache", options, log)
    pool_key = fp.digest(files_fingerprint(experiment.pool))
    results = {}
    for variant in variants:
        t0 = time.time()
        final = _curate(variant, experiment.pool, pool_key, cache, variants)
        results[variant.name] = {"final": str(final), "recipe": variant.recipe, "recipe_as_written": variant.written,
                                 "curate_s": round(time.time() - t0, 1)}
        log(f"[{variant.name}] curated: {_rows(final / 'shards')} pairs kept ({time.time() - t0:.0f}s)")
    if experiment.truth is not None and experiment.include_oracle and RAW in results:
        results[ORACLE] = {"final": str(_oracle(Path(results[RAW]["final"]), experiment.truth, out / "cache")),
                           "recipe": None, "curate_s": 0.0}
    pool_rows = _pool_rows(variants, cache)
    for name, result in results.items():
        final = Path(result["final"])
        result.update(_funnel_of(name, variants, cache))
        result["kept"] = _rows(final / "shards")
        result["kept_fraction"] = round(result["kept"] / pool_rows, 4) if pool_rows else None
        if experiment.truth is not None:
            result["truth"] = _truth_figures(final, results, experiment.truth)
        result["runs"] = [_train_eval(final, experiment, seed, out / "train" / name / f"seed{seed}", log, name)
                          for seed in experiment.train.seeds]
        result.update(_summarise(result["runs"]))
        log(f"[{name}] zero-shot top-1 {top1_text(result)} (kept {result['kept']})")
    report = {"experiment": experiment.model_dump(), "pool_rows": pool_rows, "variants": results,
              "segments": cache.counts, "wall_s": round(time.time() - started, 1)}
    report["choice"] = choose_best(results)
    report["best"] = report["choice"]["best"]
    write_report(report, out)
    (out / "ablation.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def download_pool(experiment: Experiment, output: str | Path, options: RunOptions | None = None,
                  log=print) -> Path:
    """Run (or reuse) the experiment's shared download segment; returns its run folder.

    What a filter model may self-train on before the variants run (``run_ablation``
    then reuses this download)."""
    base = plan_variants(experiment)[0]
    if not base.recipe["stages"] or _name(base.recipe["stages"][0]) != "download":
        raise UserError("the base recipe does not start with a download stage")
    cache = Segments(Path(output) / "cache", options or RunOptions(progress=False), log)
    pool_key = fp.digest(files_fingerprint(experiment.pool))
    _curate(Planned(base.name, {**base.recipe, "stages": base.recipe["stages"][:1]}, base.stages[:1]),
            experiment.pool, pool_key, cache, [])
    return cache.root / _segment_key(pool_key, base.recipe["stages"][0])


# ------------------------------------------------------------------ segments


class Segments:
    """Finished runs keyed by what produced them: ``cache/<key>/`` holds a whole run
    (shards, rejects, manifest) of one stage over its parent's shards."""

    def __init__(self, root: Path, options: RunOptions, log):
        self.root = root
        self.options = options
        self.log = log
        self.counts = {"computed": 0, "reused": 0}
        self.manifests: dict[str, dict] = {}

    def run(self, key: str, entry: dict, source, settings: dict, label: str) -> Path:
        folder = self.root / key
        manifest = folder / "manifest.json"
        if manifest.exists():
            self.counts["reused"] += 1
        else:
            self.counts["computed"] += 1
            self.log(f"  running {label} ...")
            recipe, stages = parse_recipe({**settings, "name": label, "stages": [entry]}, source=label)
            run_pipeline(recipe, stages, source, str(folder), self.options)
        self.manifests[key] = read_json(manifest)
        return folder


def _curate(variant: Planned, pool, pool_key: str, cache: Segments, everyone: list[Planned]) -> Path:
    """Run ``variant`` segment by segment, reusing every finished segment: the download,
    the score-only run of its filter model, then one segment per stage."""
    entries = variant.recipe["stages"]
    recipe = Recipe.model_validate({k: v for k, v in variant.recipe.items() if k != "stages"}).model_dump()
    settings = {k: v for k, v in recipe.items() if k != "name"}
    source, key, folder = pool, pool_key, None

    def segment(entry: dict, label: str) -> None:
        nonlocal source, key, folder
        key = _segment_key(key, entry)  # everything up to here: equal keys are equal work
        folder = cache.run(key, entry, source, settings, label)
        variant.segments.append({"key": key, "stage": label})
        source = str(folder / "shards")

    rest = entries
    if entries and _name(entries[0]) == "download":
        segment(entries[0], "download")
        rest = entries[1:]
    scoring = _scoring_entry(variant, everyone)
    if scoring is not None:
        segment(scoring, "clip_score (scoring)")
    for entry in rest:
        segment(entry, _name(entry))
    if folder is None:
        raise UserError(f"variant {variant.name}: no stages to run")
    return folder


def _scoring_entry(variant: Planned, everyone: list[Planned]) -> dict | None:
    """The score-only ``clip_score`` run for this variant's filter model, shared by every
    variant with the same model (embeddings when any of them asks for them)."""
    mine = [e for e in variant.recipe["stages"] if _name(e) == "clip_score"]
    if not mine:
        return None
    params = _params(mine[0])
    model = (params["model"], params.get("pretrained"))
    wants_embeddings = any(_params(e).get("embeddings") for p in everyone for e in p.recipe["stages"]
                           if _name(e) == "clip_score" and (_params(e)["model"], _params(e).get("pretrained")) == model)
    scoring = {k: v for k, v in params.items()
               if k not in ("min_score", "keep_top", "keep_clean", "reference", "keep_matched", "embeddings")}
    return {"clip_score": {**scoring, "embeddings": bool(wants_embeddings)}}


def _oracle(raw: Path, truth: TruthSpec, cache: Path) -> Path:
    """The downloaded pool's clean pairs only: what perfect curation would keep."""
    folder = cache / "oracle"
    if not (folder / "shards").exists():
        tmp = cache / "oracle.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "shards").mkdir(parents=True)
        for i, path in enumerate(sorted((raw / "shards").glob("*.parquet"))):
            table = pq.read_table(path)
            pq.write_table(table.filter(pc.equal(table.column(truth.column), truth.clean)),
                           tmp / "shards" / f"part-{i:05d}.parquet")
        tmp.rename(folder)
    return folder


# ------------------------------------------------------------------ figures


def _funnel_of(name: str, variants: list[Planned], cache: Segments) -> dict:
    """The variant's funnel across its segments, and stages that removed a large share."""
    variant = next((v for v in variants if v.name == name), None)
    if variant is None:
        return {"funnel": [], "warnings": []}
    funnel = []
    for i, segment in enumerate(variant.segments):
        stages = cache.manifests[segment["key"]]["stages"]
        for entry in stages if i == 0 else stages[1:]:
            label = segment["stage"] if entry["name"] != "input" else "input"
            funnel.append({"stage": label, "in": entry["in"], "kept": entry["kept"], "rejected": entry["rejected"],
                           "reasons": entry["reasons"]})
            if entry.get("warning"):  # the run's own check (recipe warn_reject_share)
                funnel[-1]["warning"] = entry["warning"]["message"].replace(entry["name"], label, 1)
    return {"funnel": funnel, "warnings": [f["warning"] for f in funnel if "warning" in f]}


def _truth_figures(final: Path, results: dict, truth: TruthSpec) -> dict:
    """Clean pairs kept, mismatched captions and all noise removed, against the pool's
    downloaded rows (the raw variant) or, without it, the kept rows alone.

    With a ``picture`` column, a clean picture counts as kept when any clean or
    re-uploaded copy of it is (dedup must drop all copies but one, and which one is
    arbitrary), and every copy beyond the first counts as a kept duplicate; the strict
    per-row share is ``clean_rows_kept``."""
    raw = results.get(RAW)
    kept_rows = _truth_rows(final / "shards", truth)
    pool_rows = _truth_rows(Path(raw["final"]) / "shards", truth) if raw else kept_rows
    kept, pool = _count(kept_rows, truth.column), _count(pool_rows, truth.column)
    clean_pool = pool.get(truth.clean, 0)
    noise_pool = sum(n for k, n in pool.items() if k != truth.clean)
    noise_kept = sum(n for k, n in kept.items() if k != truth.clean)
    figures = {"kept_by_kind": kept,
               "clean_kept": round(kept.get(truth.clean, 0) / clean_pool, 4) if clean_pool else None,
               "clean_rows_kept": round(kept.get(truth.clean, 0) / clean_pool, 4) if clean_pool else None}
    if truth.picture in kept_rows and truth.picture in pool_rows and clean_pool:
        copies = (truth.clean, truth.duplicate)
        present: dict = {}  # picture -> kept clean or re-uploaded copies
        for kind, picture in zip(kept_rows[truth.column], kept_rows[truth.picture]):
            if kind in copies:
                present[picture] = present.get(picture, 0) + 1
        clean_pictures = [p for k, p in zip(pool_rows[truth.column], pool_rows[truth.picture]) if k == truth.clean]
        figures["clean_kept"] = round(sum(p in present for p in clean_pictures) / clean_pool, 4)
        # kept noise: copies of a picture beyond the first, instead of every kept re-upload
        noise_kept += sum(n - 1 for n in present.values()) - kept.get(truth.duplicate, 0)
    return figures | {
        "mismatch_removed": round(1 - kept.get(truth.mismatch, 0) / pool[truth.mismatch], 4)
        if pool.get(truth.mismatch) else None,
        "noise_removed": round(1 - noise_kept / noise_pool, 4) if noise_pool else None,
        "clean_share_of_kept": round(kept.get(truth.clean, 0) / max(1, sum(kept.values())), 4),
    }


def _train_eval(final: Path, experiment: Experiment, seed: int, folder: Path, log, name: str) -> dict:
    """Train on the variant's shards at the fixed budget and evaluate; cached per seed."""
    from clipcurate.train.api import evaluate, train

    done = folder / "result.json"
    if done.exists():
        cached = read_json(done)
        if cached.get("data") == str(final) and cached.get("train") == experiment.train.model_dump():
            return cached  # the same shards and budget: the figures stand
    shutil.rmtree(folder, ignore_errors=True)
    spec = experiment.train
    if _rows(final / "shards") == 0:
        result = {"seed": seed, "zeroshot_top1": None, "note": "no pairs kept"}
    else:
        log(f"[{name}] training seed {seed} ({spec.steps} steps x {spec.batch_size}) ...")
        t0 = time.time()
        trained = train(str(final), spec.model, output=str(folder / "ckpt"), steps=spec.steps,
                        batch_size=spec.batch_size, lr=spec.lr, lock_text=spec.lock_text, seed=seed,
                        threads=spec.threads, quiet=True)
        scores = evaluate(trained.output, experiment.eval, pairs=experiment.retrieval, templates=spec.templates,
                          class_names=experiment.eval_class_names)
        result = {"seed": seed, "train_s": round(time.time() - t0, 1), **scores}
        shutil.rmtree(folder / "ckpt", ignore_errors=True)  # the figures are what is compared
    result.update(data=str(final), train=experiment.train.model_dump())
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=2, default=str))
    return result


def _summarise(runs: list[dict]) -> dict:
    """Mean top-1 over the seeds measured; ``seed_spread`` (max - min) only from two seeds
    up: one run says nothing about how far another seed would land."""
    top1 = [r["zeroshot_top1"] for r in runs if r.get("zeroshot_top1") is not None]
    if not top1:
        return {"zeroshot_top1": 0.0, "seed_spread": None, "seeds_measured": 0}
    summary = {"zeroshot_top1": round(sum(top1) / len(top1), 4),
               "seed_spread": round(max(top1) - min(top1), 4) if len(top1) >= 2 else None,
               "seeds_measured": len(top1)}
    for key in ("i2t_recall@1", "t2i_recall@1", "mismatch_auc"):
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            summary[key] = round(sum(values) / len(values), 4)
    return summary


TIE_RULE = "the first in the experiment's order wins (base, then the variants as listed, then raw)"


def choose_best(results: dict) -> dict:
    """The variant with the highest mean top-1 (the oracle excluded), and every variant
    tied with it at the reported precision: a tie is a result to report, not one to hide
    behind dict order."""
    candidates = [n for n in results if n != ORACLE]
    top = max(results[n]["zeroshot_top1"] for n in candidates)
    tied = [n for n in candidates if results[n]["zeroshot_top1"] == top]
    return {"best": tied[0], "by": "zeroshot_top1", "zeroshot_top1": top, "tied": tied if len(tied) > 1 else [],
            "rule": TIE_RULE if len(tied) > 1 else None}


def top1_text(result: dict) -> str:
    """``0.4500 ± 0.0100`` (half the seed spread) from two seeds up, ``0.4500 (1 seed)`` below."""
    if not result.get("seeds_measured"):
        return "- (not trained: no pairs kept)"
    if result.get("seed_spread") is None:
        return f"{result['zeroshot_top1']:.4f} (1 seed)"
    return f"{result['zeroshot_top1']:.4f} ± {result['seed_spread'] / 2:.4f}"


def choice_text(choice: dict) -> str:
    """One line: the best variant, and the tie it was chosen from, if any."""
    if not choice["tied"]:
        return f"best: {choice['best']}"
    return (f"best: {choice['best']}, tied at top-1 {choice['zeroshot_top1']:.4f} with "
            f"{', '.join(n for n in choice['tied'] if n != choice['best'])} ({choice['rule']})")


# ------------------------------------------------------------------ helpers


def _entry(entry) -> dict:
    return {entry: {}} if isinstance(entry, str) else {k: dict(v or {}) for k, v in entry.items()}


def _name(entry: dict) -> str:
    return next(iter(entry))


def _params(entry: dict) -> dict:
    return next(iter(entry.values()))


def _labels(entries: list[dict]) -> list[str]:
    """Stage labels as the recipe loader gives them (a repeated stage is ``name_2``)."""
    seen: dict[str, int] = {}
    labels = []
    for entry in entries:
        name = _name(entry)
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return labels


def _apply(base: list[dict], variant: Variant, name: str) -> list[dict]:
    entries = [_entry(e) for e in variant.stages] if variant.stages is not None else copy.deepcopy(base)
    for path, value in variant.set.items():
        label, _, param = path.partition(".")
        if not param or label not in _labels(entries):
            raise UserError(f"variant {name}: set '{path}': no stage labelled '{label}' "
                            f"(stages: {', '.join(_labels(entries))})")
        _params(entries[_labels(entries).index(label)])[param] = value
    for label in variant.remove:
        if label not in _labels(entries):
            raise UserError(f"variant {name}: remove '{label}': no such stage (stages: {', '.join(_labels(entries))})")
        del entries[_labels(entries).index(label)]
    for addition in variant.add:
        addition = dict(addition)
        after = addition.pop("after", None)
        if len(addition) != 1:
            raise UserError(f"variant {name}: add: each entry is one stage mapping, optionally with 'after'")
        if after is None:
            entries.append(_entry(addition))
        elif after not in _labels(entries):
            raise UserError(f"variant {name}: add after '{after}': no such stage")
        else:
            entries.insert(_labels(entries).index(after) + 1, _entry(addition))
    return entries


def _segment_key(parent: str, entry: dict) -> str:
    """The work up to ``parent`` plus this stage entry, model and metadata files by content
    (a filter model retrained into the same folder is another segment)."""
    return fp.digest([parent, fp.entry_fingerprint(_name(entry), _params(entry) or {})])


def _rows(shards: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(Path(shards).glob("*.parquet")))


def _truth_rows(shards: Path, truth: TruthSpec) -> dict[str, list]:
    """The truth columns of every row of a shards dir (``picture`` only where present)."""
    rows: dict[str, list] = {truth.column: []}
    files = sorted(Path(shards).glob("*.parquet"))
    has_picture = truth.picture is not None and all(truth.picture in pq.read_schema(f).names for f in files)
    if has_picture:
        rows[truth.picture] = []
    for path in files:
        table = pq.read_table(path, columns=list(rows))
        for name in rows:
            rows[name].extend(table.column(name).to_pylist())
    return rows


def _count(rows: dict[str, list], column: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in rows[column]:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def _pool_rows(variants: list[Planned], cache: Segments) -> int:
    """Input rows of the pool: the first segment's input count."""
    first = next(v for v in variants if v.segments).segments[0]["key"]
    return cache.manifests[first]["totals"]["input"]
