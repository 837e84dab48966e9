"""The trainer: learns on real shards, resumes exactly, saves open_clip checkpoints."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss

from clipcurate.pipelines.errors import UserError
from clipcurate.train import checkpoint
from clipcurate.train.api import evaluate, train
from clipcurate.train.data import decode_image
from clipcurate.train.model import create
from clipcurate.train.options import TrainConfig
from clipcurate.train.trainer import TrainStep, build_loss, build_optimizer


def test_tiny_clip_on_shapes_shards_beats_twice_chance_zero_shot(shapes_run, tmp_path):
    result = train(shapes_run / "run", "clip-tiny", output=tmp_path / "ckpt", steps=40, batch_size=32,
                   lr=2e-3, quiet=True)
    assert result.step == 40
    scores = evaluate(result.output, shapes_run / "heldout.parquet")
    assert scores["classes"] == 12 and scores["images"] == 240
    assert scores["zeroshot_top1"] >= 2 * scores["chance_top1"], scores
    assert scores["zeroshot_top5"] >= scores["zeroshot_top1"]
    assert {"i2t_recall@1", "t2i_recall@5", "i2t_recall@10"} <= set(scores)
    log = [json.loads(line) for line in (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert log[-1]["loss"] < log[0]["loss"]


def test_stop_and_resume_gives_the_same_parameters_as_one_run(shapes_run, micro_config, tmp_path):
    common = dict(steps=8, batch_size=16, lr=1e-3, warmup=2, shuffle_buffer=40, seed=7, quiet=True)
    straight = train(shapes_run / "run", micro_config, output=tmp_path / "straight", **common)
    first = train(shapes_run / "run", micro_config, output=tmp_path / "split", stop_after=4, **common)
    assert first.step == 4
    state = checkpoint.load(tmp_path / "split")
    assert state.step == 4 and state.positions == {0: 64}
    with pytest.raises(UserError, match="--resume"):
        train(shapes_run / "run", micro_config, output=tmp_path / "split", **common)
    resumed = train(shapes_run / "run", micro_config, output=tmp_path / "split", resume=True, **common)
    assert resumed.step == straight.step == 8
    a = torch.load(tmp_path / "straight" / "open_clip_pytorch_model.bin", weights_only=True)
    b = torch.load(tmp_path / "split" / "open_clip_pytorch_model.bin", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = create(micro_config)
    assert not torch.equal(fresh.model.state_dict()["visual.conv1.weight"], a["visual.conv1.weight"])


def test_checkpoint_loads_in_plain_open_clip_with_identical_embeddings(shapes_run, micro_config, tmp_path):
    result = train(shapes_run / "run", micro_config, output=tmp_path / "ckpt", steps=2, batch_size=16, quiet=True)
    ours = create(result.output)
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(result.output))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(result.output))
    model.eval(), ours.model.eval()
    import pyarrow.parquet as pq

    table = pq.read_table(shapes_run / "heldout.parquet").slice(0, 4)
    images = [decode_image(b) for b in table.column("image").to_pylist()]
    texts = table.column("caption").to_pylist()
    with torch.no_grad():
        plain_img = model.encode_image(torch.stack([preprocess(i) for i in images]))
        ours_img = ours.model.encode_image(torch.stack([ours.preprocess_val(i) for i in images]))
        plain_txt = model.encode_text(tokenizer(texts))
        ours_txt = ours.model.encode_text(ours.tokenizer(texts))
    assert torch.equal(plain_img, ours_img) and torch.equal(plain_txt, ours_txt)
    names = {p.name for p in result.output.iterdir()}
    assert {"open_clip_config.json", "open_clip_pytorch_model.bin", "trainer_state.pt", "train_state.json"} <= names
    assert [n for n in names if n.endswith((".bin", ".pth", ".safetensors"))] == ["open_clip_pytorch_model.bin"]


def test_grad_accumulation_step_equals_the_full_batch_step(shapes_run, micro_config):
    from clipcurate.train.data import ShardStream, shard_files

    bundle = create(micro_config)
    stream = ShardStream(shard_files(shapes_run / "run"), preprocess=bundle.preprocess_train,
                         tokenizer=bundle.tokenizer, batch_size=16)
    batch = next(iter(stream))
    config = TrainConfig(data="unused", output="unused", steps=1, lr=1e-3)
    params = {}
    for accum in (1, 4):
        torch.manual_seed(0)
        model = create(micro_config).model
        model.output_dict = True
        step = TrainStep(model, build_loss("clip"), build_optimizer(model, config), accum=accum, grad_clip=None)
        loss = step(batch.images, batch.texts, 0)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        params[accum] = (float(loss), grads)
    assert params[1][0] == pytest.approx(params[4][0], abs=1e-5)
    assert params[1][1].keys() == params[4][1].keys()
    for name, grad in params[1][1].items():
        torch.testing.assert_close(params[4][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_our_step_loss_is_open_clip_clip_loss(shapes_run, micro_config):
    from clipcurate.train.data import ShardStream, shard_files

    bundle = create(micro_config)
    stream = ShardStream(shard_files(shapes_run / "run"), preprocess=bundle.preprocess_train,
                         tokenizer=bundle.tokenizer, batch_size=16)
    batch = next(iter(stream))
    model = bundle.model
    with torch.no_grad():
        image, text, scale = model(batch.images, batch.texts)
        expected = ClipLoss()(image, text, scale)
    model.output_dict = True
    config = TrainConfig(data="unused", output="unused", steps=1)
    loss = TrainStep(model, build_loss("clip"), build_optimizer(model, config))(batch.images, batch.texts, 0)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_siglip_loss_trains_with_a_logit_bias(shapes_run, micro_config, tmp_path):
    result = train(shapes_run / "run", micro_config, output=tmp_path / "sig", loss="siglip", steps=3,
                   batch_size=16, quiet=True)
    config = json.loads((result.output / "open_clip_config.json").read_text())
    assert config["model_cfg"]["init_logit_bias"] == -10.0
    model = open_clip.create_model("local-dir:" + str(result.output))
    assert model.logit_bias is not None and torch.isfinite(torch.tensor(result.loss))
