"""Training options, declared once: ``TrainConfig`` feeds the Python API
(``train.api.train(**options)``), the ``curate train`` flags (generated from the fields:
name, type, default, help) and the Ray Train workers (a JSON round trip)."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TrainConfig(BaseModel):
    """Everything a training run needs; ``curate train`` flags map one to one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | list[str] = Field(description="a run directory (reads OUT/shards/*.parquet), a shards directory, "
                                  "a glob or parquet files")
    output: str = Field(description="checkpoint directory to write (open_clip local-dir format), or an object-store "
                                    "URL (s3://bucket/ckpt): each save is pushed there")
    model: str = Field("clip-tiny", description="bundled config (clip-tiny, lit-tiny), open_clip name (ViT-B-32), "
                       "JSON config or checkpoint dir")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file (open_clip model "
                                   "names only)")
    loss: Literal["clip", "siglip"] = Field("clip", description="open_clip ClipLoss or SigLipLoss")
    steps: int | None = Field(None, ge=1, description="optimizer steps to train (or --epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the shards, converted to steps (or --steps)")
    batch_size: int = Field(64, ge=2, description="samples per step per process (rank), as in open_clip")
    lr: float = Field(5e-4, gt=0, description="peak learning rate (AdamW)")
    warmup: int | None = Field(None, ge=0, description="linear warmup steps before the cosine decay "
                               "(default: 5%% of steps)")
    wd: float = Field(0.1, ge=0, description="AdamW weight decay (not on gains, biases, logit scale)")
    beta1: float = Field(0.9, description="AdamW beta1")
    beta2: float = Field(0.98, description="AdamW beta2")
    eps: float = Field(1e-6, description="AdamW epsilon")
    grad_clip: float | None = Field(1.0, ge=0, description="gradient norm clip (0: off)")
    precision: Literal["auto", "fp32", "amp_bf16", "amp_fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    accum: int = Field(1, ge=1, description="split each batch into this many micro-batches (less memory, "
                       "same contrastive batch)")
    lock_text: bool = Field(False, description="LiT: freeze the (pretrained) text tower, train the image tower only")
    augment: bool = Field(False, description="random resized crops (50-100%%), horizontal flips and colour jitter "
                          "on training images (train.model.AUGMENT), seeded, instead of open_clip's 90-100%% crop")
    threads: int | None = Field(None, ge=1, description="torch CPU threads for the run (same seed + threads: "
                                "bitwise-identical CPU runs); default: leave as set")
    workers: int = Field(0, ge=0, description="data-loader worker processes per rank")
    shuffle_buffer: int = Field(1000, ge=1, description="rows in the streaming shuffle buffer")
    seed: int = Field(0, description="seeds the model init, the shuffle and the augmentations")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    save_every: int | None = Field(None, ge=1, description="also save a checkpoint every N steps")
    stop_after: int | None = Field(None, ge=1, description="save and stop at this step; continue later with --resume")
    resume: bool = Field(False, description="continue the run saved in --output (same data, ranks and --workers); "
                         "starts fresh if there is none")
    log_every: int = Field(10, ge=1, description="log loss and samples/s every N steps")
    ray_workers: int = Field(1, ge=1, description="more than 1: data-parallel training with Ray Train "
                             "(one process per worker)")
    use_gpu: bool = Field(False, description="with --ray-workers: one GPU per worker")
    quiet: bool = Field(False, description="print only the final summary")

    @field_validator("grad_clip")
    @classmethod
    def _zero_is_off(cls, value):
        return None if value == 0 else value

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if self.batch_size % self.accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accum {self.accum}")
        return self


CLI_ALIASES = {"use_gpu": ["--gpu"]}  # flags kept from before the options were generated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per ``TrainConfig`` field (``--data`` takes several paths)."""
    for name, field in TrainConfig.model_fields.items():
        flags = [f"--{name.replace('_', '-')}", *CLI_ALIASES.get(name, [])]
        kind, choices = _plain_type(field.annotation)
        kwargs = {"dest": name, "help": _help(field), "required": field.is_required()}
        if kind is bool:
            kwargs.update(action="store_true")
        elif name == "data":
            kwargs.update(nargs="+")
        else:
            kwargs.update(type=kind, choices=choices)
            if not field.is_required():
                kwargs["default"] = field.default
        parser.add_argument(*flags, **kwargs)


def _help(field) -> str:
    """The field's description and its default, once: not for a required or on/off flag,
    nor where the default is None (unset: the description says what happens then, as
    ``--warmup``'s "default: 5% of steps" does)."""
    if field.is_required() or field.default is None or isinstance(field.default, bool):
        return field.description
    return f"{field.description} (default: {str(field.default).replace('%', '%%')})"


def from_arguments(args: argparse.Namespace) -> dict:
    """The options a parsed command line sets (``data`` as one path when one is given)."""
    options = {name: getattr(args, name) for name in TrainConfig.model_fields}
    if len(options["data"]) == 1:
        options["data"] = options["data"][0]
    return options


def _plain_type(annotation) -> tuple[type, list | None]:
    """The argparse type (and choices) of a field: ``int | None`` -> int, a Literal -> str + choices."""
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _plain_type(args[0])
    return annotation, None
