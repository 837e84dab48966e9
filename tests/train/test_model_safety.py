"""No code runs from a model folder, and no weights file allocates more than it holds:
every door that loads a model (load_clip under eval, clip_score and search; the trainer
continuing from a checkpoint; head files; resume state) refuses or neuters the attack."""

from __future__ import annotations

import pytest
import torch
from hostile_models import inflated_torch_file, legacy_torch_file, remote_code_checkpoint

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import check_torch_file


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "MARKER"
    return remote_code_checkpoint(tmp_path / "ckpt", marker), marker


def test_the_payload_runs_when_transformers_is_asked_to_trust_the_folder(hostile):
    """The attack is real: the folder's own tokenizer code runs if trust_remote_code is on."""
    from transformers import AutoTokenizer

    folder, marker = hostile
    AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    assert marker.exists()


def test_load_clip_and_the_encoder_never_import_the_folders_code(hostile):
    from clipcurate.train.clip_model import Encoder, load_clip

    folder, marker = hostile
    loaded = load_clip("local-dir:" + str(folder))
    assert loaded.tokenizer(["a red cat"]).shape == (1, 8)  # the built-in BertTokenizer, not the payload
    Encoder(str(folder), device="cpu")
    assert not marker.exists()


def test_curate_eval_and_the_trainer_never_import_the_folders_code(hostile, tmp_path, capsys):
    from clipcurate.pipelines.cli import main
    from clipcurate.train import datasets
    from clipcurate.train.model import create

    folder, marker = hostile
    create(folder)  # continuing training from the checkpoint
    images, labels, captions = datasets.shapes(12, seed=0)
    datasets.write_labeled(tmp_path / "labeled.parquet", images, labels, captions)
    assert main(["eval", "--model", "local-dir:" + str(folder), "--data", str(tmp_path / "labeled.parquet")]) == 0
    assert not marker.exists()


def test_a_folder_that_needs_its_own_code_is_a_one_line_error(hostile):
    import json

    from clipcurate.train.clip_model import load_clip

    folder, marker = hostile
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PayloadTokenizer"  # no built-in class to fall back on
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="never runs code from a model folder"):
        load_clip(str(folder))
    assert not marker.exists()


def test_weights_that_declare_more_than_they_hold_are_refused_before_loading(hostile, tmp_path):
    from clipcurate.train.clip_model import WEIGHTS_FILE, load_clip
    from clipcurate.train.heads import load_head

    folder, _ = hostile
    inflated = inflated_torch_file(tmp_path / "inflated.pt")
    assert inflated.stat().st_size < 100_000
    with pytest.raises(UserError, match="compressed"):
        check_torch_file(inflated)
    with pytest.raises(UserError, match="not a zip-format torch file"):
        check_torch_file(legacy_torch_file(tmp_path / "legacy.pt"))
    (folder / WEIGHTS_FILE).write_bytes(inflated.read_bytes())
    with pytest.raises(UserError, match="compressed"):
        load_clip(str(folder))
    with pytest.raises(ValueError, match="compressed"):
        load_head(inflated)
    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pt")
    check_torch_file(tmp_path / "plain.pt")  # what torch.save writes passes
