"""Load and save CLIP models for the stages that need one (clip_score, semantic dedup).

One function resolves every way a recipe can name a model, and returns open_clip's
own model, inference transform and tokenizer, so a score computed by a stage is the
score plain open_clip computes:

- ``"ViT-B-32"`` + ``pretrained="datacomp_xl_s13b_b90k"``: an open_clip name and tag
  (weights come from the hub; ``pretrained`` may also be a weights file, or None for
  random weights);
- ``"local-dir:PATH"`` or a plain directory ``PATH``: a checkpoint in our contract
  format (``open_clip_config.json`` with ``model_cfg``/``preprocess_cfg`` and
  ``open_clip_pytorch_model.bin``), as the bundled trainer writes it;
- ``"path/to/config.json"`` + ``pretrained="path/to/weights.bin"``: an open_clip model
  config (open_clip's ``model_configs/*.json`` format, or our wrapped format) and a
  state dict.

``save_checkpoint`` writes the contract format, so the loader and the writer of a
checkpoint share one definition of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import open_clip
import torch

from clipcurate.pipelines import fingerprint as fp

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
LOCAL_DIR = "local-dir:"


class ClipModel(NamedTuple):
    """An open_clip model in eval mode, its inference transform and its tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]


def load_clip(model: str, pretrained: str | None = None, *, device: str | torch.device = "cpu") -> ClipModel:
    """Build the model named by ``model`` (+ ``pretrained``) in fp32 on ``device``.

    Mixed precision is the caller's choice (autocast), so fp32 weights serve both the
    exact CPU path and fp16/bf16 autocast on GPU.
    """
    name, pretrained, preprocess_cfg = _resolve(model, pretrained)
    clip, _, preprocess = open_clip.create_model_and_transforms(
        name,
        pretrained=pretrained,
        device=device,
        image_mean=preprocess_cfg.get("mean"),
        image_std=preprocess_cfg.get("std"),
        image_interpolation=preprocess_cfg.get("interpolation"),
        image_resize_mode=preprocess_cfg.get("resize_mode"),
    )
    clip.eval()
    return ClipModel(clip, preprocess, open_clip.get_tokenizer(name))


def model_config(model: str, pretrained: str | None = None) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) without
    building the model: stages use it to declare column types (embedding width)."""
    name, _, _ = _resolve(model, pretrained)
    if name.startswith(LOCAL_DIR):
        return _read_json(Path(name[len(LOCAL_DIR):]) / CONFIG_FILE)["model_cfg"]
    if name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config  # the hub path: only when asked for

        return _get_hf_config(name[len("hf-hub:"):])["model_cfg"]
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"unknown open_clip model '{model}' (known: {', '.join(open_clip.list_models())})")
    return config


def model_fingerprint(model: str, pretrained: str | None = None) -> str:
    """What identifies the outputs of a model: its spec and, for local files, a hash of
    their content (a filter model retrained into the same folder is another model).
    Columns a stage computes with the model carry this in their field metadata, so a
    later stage can reuse them only when they come from the same model."""
    name, weights, _ = _resolve(model, pretrained)
    files = []
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):])
        files = [folder / CONFIG_FILE, folder / WEIGHTS_FILE]
    elif Path(model).suffix == ".json":
        files = [Path(model)]
    if weights and Path(weights).is_file():
        files.append(Path(weights))
    # content digests shared with the run fingerprints (pipelines/fingerprint.py): one read per file and process
    digest = fp.digest([name, weights, [fp.path_digest(path) for path in files]])
    return f"{model}|{pretrained}|{digest[:16]}"


def save_checkpoint(model: torch.nn.Module, path: str | Path, *, model_cfg: dict, preprocess_cfg: dict | None = None) -> Path:
    """Write ``model`` as a checkpoint directory in the contract format.

    ``preprocess_cfg`` defaults to the one open_clip attached to the model, so the
    saved checkpoint preprocesses images exactly as the model was built to.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if preprocess_cfg is None:
        preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    torch.save(model.state_dict(), path / WEIGHTS_FILE)
    return path


# ----------------------------------------------------------------------------- helpers


def _resolve(model: str, pretrained: str | None) -> tuple[str, str | None, dict]:
    """Map the accepted spellings onto open_clip's factory: (name, pretrained,
    preprocess overrides)."""
    if model.startswith(LOCAL_DIR) or model.startswith("hf-hub:"):
        return model, None, {}
    path = Path(model)
    if path.is_dir():
        return LOCAL_DIR + str(path.resolve()), None, {}
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        if pretrained is None:
            raise ValueError(f"model config {path} needs `pretrained`: the weights file to load")
        config = _read_json(path)
        preprocess_cfg = config.get("preprocess_cfg", {}) if "model_cfg" in config else {}
        return _register_config(config.get("model_cfg", config), path), pretrained, preprocess_cfg
    return model, pretrained, {}


def _register_config(config: dict, path: Path) -> str:
    """Register a JSON model config with open_clip under a content-derived name.

    open_clip builds models only from registered configs; a name derived from the
    content cannot shadow a built-in architecture (a user's ``ViT-B-32.json``).
    """
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ValueError(f"{path} is not an open_clip model config (missing {', '.join(missing)})")
    text = json.dumps(config, sort_keys=True)
    name = f"clipcurate-{path.stem}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    if open_clip.get_model_config(name) is None:
        folder = Path(tempfile.gettempdir()) / "clipcurate-model-configs"
        folder.mkdir(exist_ok=True)
        target = folder / f"{name}.json"
        if not target.exists():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(target)
        open_clip.add_model_config(target)
    return name


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
