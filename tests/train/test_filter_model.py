"""A filter model worth its name: mismatch AUC, seeded augmentation, reproducible CPU
training, web alt-text captions and the recommended filter-model path."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clipcurate.train import datasets
from clipcurate.train.api import evaluate, train
from clipcurate.train.data import ShardStream, _read_unit, shard_files
from clipcurate.train.evaluate import mismatch_detection, pair_scores, roc_auc
from clipcurate.train.model import create


@pytest.fixture(scope="module")
def fashion_pairs(tmp_path_factory):
    """96 trusted Fashion-MNIST pairs with alt-text (64 px), 60 held-out pairs with labels,
    and a pool of 80 pairs of which a quarter have another class's caption."""
    root = tmp_path_factory.mktemp("fashion")
    images, labels = datasets.fashion_mnist("train")
    test_images, test_labels = datasets.fashion_mnist("test")
    datasets.write_shards(root / "trusted", datasets.product_photos(images[:96]),
                          datasets.alt_text_captions(labels[:96], seed=0), row_group_size=32)
    datasets.write_labeled(root / "heldout.parquet", datasets.product_photos(test_images[:60]),
                           [datasets.FASHION_MNIST_CLASSES[c] for c in test_labels[:60]],
                           datasets.alt_text_captions(test_labels[:60], seed=1))
    captions, _ = datasets.mismatch_captions(labels[100:180], datasets.alt_text_captions(labels[100:180], seed=2),
                                             fraction=0.25, seed=3)
    datasets.write_shards(root / "pool", datasets.product_photos(images[100:180]), captions, row_group_size=40)
    return root


def test_roc_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    positive = rng.integers(0, 6, size=40).astype(float)  # many ties, within and across groups
    negative = rng.integers(-2, 4, size=30).astype(float)
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in positive for n in negative])
    assert roc_auc(positive, negative) == pytest.approx(pairwise, abs=1e-12)
    assert roc_auc([1.0, 2.0], [0.0, 0.5]) == 1.0
    assert roc_auc([0.0], [1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    sklearn = pytest.importorskip("sklearn.metrics")
    reference = sklearn.roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[positive, negative])
    assert roc_auc(positive, negative) == pytest.approx(reference, abs=1e-12)


def test_mismatch_detection_pairs_each_image_with_a_caption_of_another_label():
    # one-hot images and captions: row i's features point at its label, so a true pair
    # scores 1 and a caption of another label 0 -- unless that caption is corrupted.
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    images = torch.nn.functional.one_hot(torch.tensor(labels), 4).float()
    texts = images.clone()
    texts[0] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a caption of row 0 that fits label 1
    result = mismatch_detection(images, texts, labels.tolist(), seed=0)
    true = pair_scores(images, texts)
    partners = datasets.other_label_partners(labels, np.random.default_rng([0, 7]))
    assert (labels[partners] != labels).all()
    mismatch = pair_scores(images, texts[partners])
    assert result["mismatch_auc"] == pytest.approx(roc_auc(true, mismatch), abs=1e-6)
    pairwise = np.mean([(t > m) + 0.5 * (t == m) for t in true for m in mismatch])
    assert result["mismatch_auc"] == pytest.approx(pairwise, abs=1e-6)
    assert result["mismatch_pairs"] == 8
    assert result["min_score_keep95"] == pytest.approx(np.quantile(true, 0.05), abs=1e-6)
    assert result["mismatch_removed_at_keep95"] == pytest.approx((mismatch < np.quantile(true, 0.05)).mean())
    # same seed, same draw; without labels any other row is a partner
    assert mismatch_detection(images, texts, labels.tolist(), seed=0) == result
    unlabeled = datasets.other_label_partners(np.zeros(8), np.random.default_rng([0, 7]))
    assert (unlabeled != np.arange(8)).all()


def test_alt_text_captions_are_deterministic_and_name_the_product():
    labels = np.arange(10).repeat(20)
    captions = datasets.alt_text_captions(labels, seed=0)
    assert captions == datasets.alt_text_captions(labels, seed=0)
    assert captions != datasets.alt_text_captions(labels, seed=1)
    assert len(captions) == 200 and len(set(captions)) > 150
    for label, caption in zip(labels, captions):
        assert any(noun in caption for noun in datasets.ALT_TEXT_NOUNS[label]), caption
    assert datasets.alt_text_captions([], seed=0) == []
    with pytest.raises(ValueError):
        datasets.alt_text_captions([10])
    swapped, mask = datasets.mismatch_captions(labels, captions, fraction=0.25, seed=3)
    assert mask.sum() == 50 and swapped != captions
    assert [c for c, m in zip(swapped, mask) if not m] == [c for c, m in zip(captions, mask) if not m]
    for label, caption in zip(labels[mask], np.asarray(swapped, dtype=object)[mask]):
        assert not any(noun in caption for noun in datasets.ALT_TEXT_NOUNS[label] if noun not in ("shirt",))


def test_augment_changes_pixels_deterministically_by_seed(fashion_pairs, micro_config):
    files = shard_files(fashion_pairs / "trusted")
    rows = list(_read_unit(ShardStream(files, preprocess=None, tokenizer=None, batch_size=8).units[0]))[:8]

    bundles = {augment: create(micro_config, augment=augment) for augment in (False, True)}

    def pixels(augment: bool, seed: int, position: int = 8) -> torch.Tensor:
        bundle = bundles[augment]
        stream = ShardStream(files, preprocess=bundle.preprocess_train, tokenizer=bundle.tokenizer,
                             batch_size=8, seed=seed)
        return stream._collate(rows, 0, position).images

    plain, augmented = pixels(False, 0), pixels(True, 0)
    assert plain.shape == augmented.shape == (8, 3, 16, 16)
    assert (plain - augmented).abs().mean() > 0.05
    assert torch.equal(augmented, pixels(True, 0))  # same (seed, worker, position): same pixels
    torch.manual_seed(99), random.seed(99)  # global RNG state does not matter
    assert torch.equal(augmented, pixels(True, 0))
    assert not torch.equal(augmented, pixels(True, 1))
    assert not torch.equal(augmented, pixels(True, 0, position=16))
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    pixels(True, 0)  # and is left as it was
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)


def test_cpu_training_is_bitwise_reproducible_and_threads_pin_it(fashion_pairs, micro_config, tmp_path):
    common = dict(steps=5, batch_size=16, lr=1e-3, augment=True, seed=3, quiet=True)
    train(fashion_pairs / "trusted", micro_config, output=tmp_path / "a", **common)
    train(fashion_pairs / "trusted", micro_config, output=tmp_path / "b", **common)
    torch.set_num_threads(2)  # the fixture restores it
    train(fashion_pairs / "trusted", micro_config, output=tmp_path / "c", threads=1, **common)
    assert torch.get_num_threads() == 2
    weights = {k: torch.load(tmp_path / k / "open_clip_pytorch_model.bin", weights_only=True) for k in "abc"}
    for other in "bc":
        assert all(torch.equal(weights["a"][k], weights[other][k]) for k in weights["a"]), other
    state = json.loads((tmp_path / "c" / "train_state.json").read_text())
    assert state["threads"] == 1 and state["config"]["augment"] is True


def test_locked_text_features_are_kept_per_caption_and_match_the_tower():
    fresh = create("lit-tiny")
    locked = create("lit-tiny", lock_text=True)
    locked.model.load_state_dict(fresh.model.state_dict())
    captions = ["IMG_2263 T-shirt", "buy cozy t-shirt online, free shipping", "IMG_2263 T-shirt", "women's ankle boot"]
    tokens = fresh.tokenizer(captions)
    features = locked.model.text.forward
    with torch.no_grad():
        expected = fresh.model.eval().encode_text(tokens)
        torch.testing.assert_close(locked.model.eval().encode_text(tokens), expected, rtol=1e-5, atol=1e-6)
        assert len(features.cache) == 3
        again = fresh.tokenizer(["women's ankle boot", "IMG_2263 T-shirt"])
        torch.testing.assert_close(locked.model.encode_text(again), expected[[3, 0]], rtol=1e-5, atol=1e-6)
    assert len(features.cache) == 3


def test_eval_pairs_only_reports_mismatch_auc(fashion_pairs, micro_config, tmp_path):
    result = train(fashion_pairs / "trusted", micro_config, output=tmp_path / "m", steps=2, batch_size=16, quiet=True)
    scores = evaluate(result.output, pairs=fashion_pairs / "heldout.parquet")
    assert "zeroshot_top1" not in scores and scores["pairs"] == 60
    assert 0 <= scores["mismatch_auc"] <= 1 and scores["mismatch_pairs"] == 60
    assert 0 <= scores["mismatch_removed_at_keep95"] <= 1
    both = evaluate(result.output, fashion_pairs / "heldout.parquet")
    assert both["mismatch_auc"] == scores["mismatch_auc"] and "zeroshot_top1" in both


def test_recommended_train_and_eval_commands_report_mismatch_auc(fashion_pairs, tmp_path, capsys):
    from clipcurate.pipelines.cli import main

    out = tmp_path / "filter-model"
    code = main(["train", "--data", str(fashion_pairs / "trusted"), "--model", "lit-resnet-tiny", "--lock-text",
                 "--augment", "--steps", "3", "--batch-size", "16", "--lr", "1e-3", "--threads", "1",
                 "--output", str(out), "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    code = main(["eval", "--model", str(out), "--pairs", str(fashion_pairs / "heldout.parquet")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["mismatch_auc"] <= 1 and result["mismatch_pairs"] == 60 and "zeroshot_top1" not in result
    assert main(["eval", "--model", str(out)]) == 2
    assert "--pairs" in capsys.readouterr().err


def test_filter_model_command_self_trains_on_the_pools_best_half(fashion_pairs, tmp_path, capsys):
    import argparse

    import open_clip

    from clipcurate.train import filter_model_cli
    from clipcurate.train.evaluate import score_pairs
    from clipcurate.train.filter_model import read_pairs

    out = tmp_path / "fm"
    parser = argparse.ArgumentParser()
    filter_model_cli.configure(parser)
    args = parser.parse_args(["--trusted", str(fashion_pairs / "trusted"), "--pool", str(fashion_pairs / "pool"),
                              "--heldout", str(fashion_pairs / "heldout.parquet"), "--output", str(out),
                              "--steps", "2", "--self-train-steps", "3", "--batch-size", "16", "--threads", "1"])
    assert filter_model_cli.run(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 5 and summary["pool_scored"] == 80 and summary["pool_added"] == 40
    assert 0 <= summary["mismatch_auc"] <= 1 and summary["clip_score_model"] == f"local-dir:{out}"

    pool = read_pairs(fashion_pairs / "pool")
    scores = score_pairs(out / "trusted-only", pool)
    best = set(np.argsort(-scores, kind="stable")[:40].tolist())
    selected = pq.read_table(out / "self-train" / "shards" / "part-00000.parquet")
    images = pool.column("image").to_pylist()
    assert selected.column("image").to_pylist() == [images[i] for i in sorted(best)]
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 3 and state["config"]["lock_text"] and state["config"]["augment"]
    assert state["config"]["model"] == "lit-resnet-tiny"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")  # what clip_score loads
    assert preprocess(datasets.product_photos(np.zeros((1, 28, 28), np.uint8))[0]).shape == (3, 32, 32)

    from clipcurate.pipelines.errors import UserError
    from clipcurate.train.filter_model import train_filter_model

    with pytest.raises(UserError, match="already holds a filter model"):
        train_filter_model(fashion_pairs / "trusted", output=out, steps=1)
