"""Heads over CLIP embeddings: small torch networks that turn an image (or image + text)
embedding into one score, and the file that carries one.

LAION cut its subsets with such heads: an aesthetic score (the improved aesthetic
predictor, an MLP over normalised ViT-L/14 image embeddings), ``punsafe`` (the CLIP-based
NSFW detector) and ``pwatermark``; NeMo Curator and Data-Juicer ship the same kind of
filters. A head is only meaningful on embeddings of the CLIP model it was trained on, so
the file names that model and the stage refuses any other.

A head file is ``torch.save`` of plain containers and tensors, loaded with
``torch.load(weights_only=True)`` (no pickled code runs):

- ``format``: ``"clipcurate.head/1"``;
- ``layers``: the network as a list of layer tokens (``"linear:768:1024"``, ``"relu"``,
  ``"gelu"``, ``"dropout:0.2"``, ``"sigmoid"``), built as ``torch.nn.Sequential`` named
  ``layers`` (so published state dicts of that shape load unchanged);
- ``state_dict``: its weights;
- ``metadata``: ``name``; ``model`` (``spec``, ``pretrained``, ``fingerprint``,
  ``embed_dim``: the CLIP model whose embeddings it reads); ``input`` (``"image"`` or
  ``"image+text"``: the two concatenated); ``normalize`` (L2-normalise each embedding
  first); ``output`` (``kind`` ``"probability"`` with the ``positive`` class it gives the
  probability of, or ``"score"`` with the ``target`` it predicts); ``training`` (rows,
  held-out figures) when ``curate heads train`` wrote it.

Published heads load from their own files (``PUBLISHED``): LAION's improved aesthetic
predictor (``sac+logos+ava1-l14-linearMSE.pth``: a state dict of
``layers.{0,2,4,6,7}``, Linear 768-1024-128-64-16-1 with dropouts and no activations,
over L2-normalised OpenAI ViT-L/14 image embeddings, output the mean AVA-style rating,
about 1-10) and LAION's ViT-H/14 NSFW detector (``h14_nsfw.pth``, the torch port in
LAION-AI/CLIP-based-NSFW-Detector; ReLU MLP 1024-1024-2048-1024-256-128-16-1 over
normalised ViT-H/14 laion2b embeddings, output ``punsafe``). docs/heads.md says where
to get them; nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clipcurate.pipelines.limits import check_torch_file

FORMAT = "clipcurate.head/1"
INPUTS = ("image", "image+text")


@dataclass
class Head:
    """A loaded head: the network (eval mode, fp32, CPU) and what it means."""

    net: torch.nn.Module  # ``layers``: the Sequential of ``build_layers``
    layers: list[str]
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metadata.get("name", "head")

    @property
    def input(self) -> str:
        return self.metadata.get("input", "image")

    @property
    def in_dim(self) -> int:
        return self.net.layers[0].in_features

    @property
    def model(self) -> dict:
        return self.metadata.get("model", {})

    @property
    def output(self) -> dict:
        return self.metadata.get("output", {})

    def features(self, image: np.ndarray, text: np.ndarray | None = None) -> torch.Tensor:
        """The head's input from float embeddings (rows, dim): normalised and concatenated
        as its metadata says."""
        parts = [image] if self.input == "image" else [image, text]
        if any(p is None for p in parts):
            raise ValueError(f"head '{self.name}' reads {self.input} embeddings")
        tensors = [torch.as_tensor(np.ascontiguousarray(p), dtype=torch.float32) for p in parts]
        if self.metadata.get("normalize", True):
            tensors = [torch.nn.functional.normalize(t, dim=-1) for t in tensors]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)

    @torch.inference_mode()
    def score(self, features: torch.Tensor) -> np.ndarray:
        """One float32 score per row: a probability (sigmoid of the logit) for
        classification heads, the raw output for score heads."""
        out = self.net(features).reshape(-1).float()
        if self.output.get("kind") == "probability":
            out = torch.sigmoid(out)
        return out.numpy().astype(np.float32, copy=False)


class HeadNet(torch.nn.Module):
    """The network of a head: one ``Sequential`` named ``layers`` (the published heads'
    state dict keys are ``layers.<i>.weight``)."""

    def __init__(self, layers: list[str]):
        super().__init__()
        self.layers = build_layers(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_layers(layers: list[str]) -> torch.nn.Sequential:
    """``torch.nn.Sequential`` from layer tokens; the first is a linear layer, the last
    gives one output."""
    modules: list[torch.nn.Module] = []
    for token in layers:
        kind, _, args = token.partition(":")
        if kind == "linear":
            fan_in, fan_out = (int(v) for v in args.split(":"))
            modules.append(torch.nn.Linear(fan_in, fan_out))
        elif kind == "dropout":
            modules.append(torch.nn.Dropout(float(args or 0.0)))
        elif kind in _ACTIVATIONS:
            modules.append(_ACTIVATIONS[kind]())
        else:
            raise ValueError(f"unknown head layer '{token}' (known: linear:IN:OUT, dropout:P, "
                             f"{', '.join(_ACTIVATIONS)})")
    linears = [m for m in modules if isinstance(m, torch.nn.Linear)]
    if not linears or not isinstance(modules[0], torch.nn.Linear) or linears[-1].out_features != 1:
        raise ValueError("a head starts with a linear layer and ends with one output")
    return torch.nn.Sequential(*modules)


def mlp_layers(in_dim: int, hidden: list[int], *, dropout: float = 0.0, activation: str = "relu") -> list[str]:
    """Tokens of a linear head (``hidden`` empty) or an MLP."""
    dims = [in_dim, *hidden, 1]
    tokens = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        tokens.append(f"linear:{fan_in}:{fan_out}")
        if i < len(dims) - 2:
            tokens.append(activation)
            if dropout > 0:
                tokens.append(f"dropout:{dropout:g}")
    return tokens


def save_head(head: Head, path: str | os.PathLike) -> Path:
    """Write a head file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "layers": list(head.layers), "metadata": head.metadata,
               "state_dict": {k: v.detach().cpu().contiguous() for k, v in head.net.state_dict().items()}}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_head(path: str | os.PathLike, format: str = "clipcurate", *, name: str | None = None) -> Head:
    """A head from our file (``format="clipcurate"``) or a published one (``PUBLISHED``).
    ``weights_only``: a file that needs arbitrary unpickling is refused."""
    path = Path(path)
    try:
        check_torch_file(path)  # nothing allocated beyond what the file holds
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"head file not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(f"{path}: not a head file torch can load with weights_only ({_first_line(err)})") from None
    if format == "clipcurate":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (a published state dict? set its format, "
                             f"one of {', '.join(PUBLISHED)})")
        layers, state, metadata = payload["layers"], payload["state_dict"], dict(payload["metadata"])
    elif format in PUBLISHED:
        published = PUBLISHED[format]
        layers, state = list(published.layers), payload
        metadata = published.metadata()
    else:
        raise ValueError(f"unknown head format '{format}' (known: clipcurate, {', '.join(PUBLISHED)})")
    net = HeadNet(layers)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: weights do not fit a {format} head ({_first_line(err)})") from None
    net.eval()
    if name is not None:
        metadata["name"] = name
    head = Head(net, list(layers), metadata)
    if head.input not in INPUTS:
        raise ValueError(f"{path}: input '{head.input}' is not one of {', '.join(INPUTS)}")
    return head


@dataclass(frozen=True)
class Published:
    """A head format someone published: its layers and the model it was trained on."""

    layers: tuple[str, ...]
    model: str
    pretrained: str
    output: dict
    source: str

    def metadata(self) -> dict:
        return {"name": self.output.get("target", "head"), "input": "image", "normalize": True,
                "model": {"spec": self.model, "pretrained": self.pretrained, "fingerprint": None,
                          "embed_dim": int(self.layers[0].split(":")[1])},
                "output": dict(self.output), "source": self.source}


PUBLISHED: dict[str, Published] = {
    "laion_aesthetic": Published(
        layers=("linear:768:1024", "dropout:0.2", "linear:1024:128", "dropout:0.2", "linear:128:64",
                "dropout:0.1", "linear:64:16", "linear:16:1"),
        model="ViT-L-14", pretrained="openai",
        output={"kind": "score", "target": "aesthetic", "scale": "mean rating, about 1-10"},
        source="christophschuhmann/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth)"),
    "laion_nsfw_h14": Published(
        layers=("linear:1024:1024", "relu", "dropout:0.2", "linear:1024:2048", "relu", "dropout:0.2",
                "linear:2048:1024", "relu", "dropout:0.2", "linear:1024:256", "relu", "dropout:0.2",
                "linear:256:128", "relu", "dropout:0.2", "linear:128:16", "linear:16:1"),
        model="ViT-H-14", pretrained="laion2b_s32b_b79k",
        output={"kind": "score", "target": "punsafe", "scale": "about 0 (safe) to 1 (unsafe)"},
        source="LAION-AI/CLIP-based-NSFW-Detector (h14_nsfw.pth)"),
}

_ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ------------------------------------------------------------ embedding columns and models

IMAGE_EMB, TEXT_EMB = "clip_image_emb", "clip_text_emb"


def spec_of(fingerprint: str) -> tuple[str, str | None]:
    """(model spec, pretrained) from a fingerprint ``spec|pretrained|digest``."""
    spec, pretrained, _ = fingerprint.rsplit("|", 2)
    return spec, (None if pretrained in ("", "None") else pretrained)


def head_model_fingerprint(head: Head) -> str:
    """The fingerprint of the model a head reads: stored in our files, derived from the
    spec for published heads (hub names and tags have no local files to hash)."""
    model = head.model
    if model.get("fingerprint"):
        return model["fingerprint"]
    from clipcurate.train.clip_model import model_fingerprint

    return model_fingerprint(model["spec"], model.get("pretrained"))
