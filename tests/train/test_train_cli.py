"""``curate train`` and ``curate eval`` through the real command table."""

from __future__ import annotations

import json

from clipcurate.pipelines.cli import main


def test_curate_train_then_eval(shapes_run, micro_config, tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main(["train", "--data", str(shapes_run / "run"), "--model", str(micro_config), "--steps", "3",
                 "--batch-size", "16", "--output", str(out), "--log-every", "1"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("step 1/3")
    summary = json.loads(printed[-1])
    assert summary["step"] == 3 and summary["output"] == str(out)

    code = main(["eval", "--model", str(out), "--data", str(shapes_run / "heldout.parquet"),
                 "--log", str(tmp_path / "eval.jsonl")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["classes"] == 12 and 0 <= result["zeroshot_top1"] <= 1 and "t2i_recall@10" in result
    assert json.loads((tmp_path / "eval.jsonl").read_text()) == result


def test_epochs_become_steps_and_quiet_prints_only_the_summary(shapes_run, micro_config, tmp_path, capsys):
    # 640 rows, batch 16: half an epoch is 20 steps
    code = main(["train", "--data", str(shapes_run / "run" / "shards"), "--model", str(micro_config),
                 "--epochs", "0.5", "--batch-size", "16", "--output", str(tmp_path / "e"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and json.loads(printed[0])["step"] == 20


def test_user_errors_are_one_line(shapes_run, tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nothing"), "--steps", "1", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    code = main(["train", "--data", str(shapes_run / "run"), "--model", "no-such-model", "--steps", "1",
                 "--output", str(tmp_path / "o")])
    assert code == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    code = main(["train", "--data", str(shapes_run / "run"), "--steps", "4", "--batch-size", "10",
                 "--accum", "3", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "not divisible" in capsys.readouterr().err
    code = main(["eval", "--model", "clip-tiny", "--data", str(tmp_path / "missing.parquet")])
    assert code == 2


def test_train_flags_and_api_come_from_one_declaration():
    """Every TrainConfig field is a `curate train` flag with the field's default, and a
    parsed command line builds the same config the Python API builds."""
    import argparse

    from clipcurate.train.options import TrainConfig, add_arguments, from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "out/", "--output", "ckpt/", "--steps", "5", "--loss", "siglip",
                              "--lock-text", "--grad-clip", "0", "--gpu"])
    options = from_arguments(args)
    assert set(options) == set(TrainConfig.model_fields)
    config = TrainConfig(**options)
    assert config == TrainConfig(data="out/", output="ckpt/", steps=5, loss="siglip", lock_text=True,
                                 grad_clip=None, use_gpu=True)
    defaults = vars(parser.parse_args(["--data", "d", "--output", "o"]))
    for name, field in TrainConfig.model_fields.items():
        if not field.is_required():
            assert defaults[name] == field.default, name


def test_train_help_shows_each_default_once(capsys, monkeypatch):
    """The default in a field's description ("default: 5% of steps") is the only one its
    option shows; others show the field's default; unset and on/off options show none."""
    import pytest

    from clipcurate.train.options import TrainConfig

    monkeypatch.setenv("COLUMNS", "300")  # no wrapped help text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    lines: dict[str, str] = {}  # option -> its help, the invocation and the line under it when it is long
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  --"):
            flag = line.split()[0].rstrip(",")
            lines[flag] = line
        elif line.startswith("    ") and lines:
            lines[flag] += " " + line.strip()
    assert all(line.count("default") <= 1 for line in lines.values()), lines
    assert lines["--warmup"].endswith("(default: 5% of steps)")
    assert lines["--lr"].endswith("(default: 0.0005)") and lines["--model"].endswith("(default: clip-tiny)")
    for flag in ("--steps", "--pretrained", "--save-every", "--lock-text", "--data"):
        assert "default" not in lines[flag], lines[flag]
    shown = [name for name, field in TrainConfig.model_fields.items()
             if f"(default: {field.default})" in lines[f"--{name.replace('_', '-')}"]]
    assert len(shown) > 15


def test_top_5_is_reported_only_over_more_than_5_classes():
    """Over 5 or fewer classes every target is among the top 5: a 1.0 that measures nothing."""
    import torch

    from clipcurate.train.evaluate import top_k_accuracy

    logits = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0], [0.05, 0.2, 0.9, 0.1, 0.3, 0.0]])
    six = top_k_accuracy(logits, torch.tensor([0, 5]))
    assert six == {"zeroshot_top1": 0.5, "chance_top1": 1 / 6, "zeroshot_top5": 0.5, "chance_top5": 5 / 6}
    five = top_k_accuracy(logits[:, :5], torch.tensor([0, 4]))
    assert five == {"zeroshot_top1": 0.5, "chance_top1": 0.2}
