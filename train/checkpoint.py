"""Trainer checkpoints: the project's CLIP checkpoint (``train/clip_model.py``: a plain
open_clip ``local-dir`` model) plus the trainer's resume state beside it, in files
open_clip never picks up as weights: ``trainer_state.pt`` (optimizer, grad scaler, RNG)
and ``train_state.json`` (step, data positions, config). The weights and the state are
written to temporary names first, then renamed into place together.

An ``--output`` in object storage (``s3://bucket/ckpt``) is trained into a local mirror
(``staged``): a checkpoint already there is refused, or pulled first to resume it,
and every save is pushed back (``publish``): ``trainer_state.pt`` first,
``train_state.json`` last, so a push cut short leaves the step numbers of the two state
files disagreeing, which ``load`` refuses, never a mix of two saves that it would resume.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import check_torch_file, read_json
from clipcurate.pipelines.storage import Storage, cache_dir, is_uri
from clipcurate.train.clip_model import save_checkpoint

STATE_JSON = "train_state.json"
STATE_TENSORS = "trainer_state.pt"


@dataclass
class TrainerState:
    step: int
    positions: dict[int, int]  # data worker -> rows consumed
    layout: dict  # {"world_size": n, "workers_per_rank": n}: positions are only valid for it
    tensors: dict  # optimizer, scaler, RNG states
    info: dict  # the rest of train_state.json (config, last loss)


def save(directory: str | Path, *, model: torch.nn.Module, config: dict, tokenizer, optimizer, step: int,
         positions: dict[int, int], layout: dict, scaler=None, info: dict | None = None) -> Path:
    tensors = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "step": step}
    if scaler is not None:
        tensors["scaler"] = scaler.state_dict()
    if torch.cuda.is_available():
        tensors["cuda_rng"] = torch.cuda.get_rng_state_all()
    state = {"step": step, "positions": {str(k): v for k, v in sorted(positions.items())},
             "layout": layout, **(info or {})}
    return save_checkpoint(model, directory, config=config, tokenizer=tokenizer, beside={
        STATE_TENSORS: lambda p: torch.save(tensors, p),
        STATE_JSON: lambda p: p.write_text(json.dumps(state, indent=2)),
    })


def exists(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / STATE_JSON).is_file() and (directory / STATE_TENSORS).is_file()


def load(directory: str | Path, map_location="cpu") -> TrainerState:
    directory = Path(directory)
    state = read_json(directory / STATE_JSON)
    check_torch_file(directory / STATE_TENSORS)
    tensors = torch.load(directory / STATE_TENSORS, map_location=map_location, weights_only=True)
    if int(tensors["step"]) != int(state["step"]):
        raise UserError(f"checkpoint {directory} was interrupted while saving (step {tensors['step']} "
                        f"vs {state['step']}); it cannot be resumed")
    positions = {int(k): int(v) for k, v in state.pop("positions").items()}
    return TrainerState(step=int(state.pop("step")), positions=positions, layout=state.pop("layout"),
                        tensors=tensors, info=state)


def staged(output: str | Path, rank: int = 0, *, resume: bool = False) -> tuple[Path, Storage | None]:
    """Where this rank writes its checkpoint, and the object store it is published to:
    ``(output, None)`` for a local ``output``; for a URI, a fresh local mirror of it (one
    per rank: ranks on one machine do not share it), holding the stored checkpoint when
    resuming. A stored checkpoint without ``resume`` is refused before anything is copied."""
    if not is_uri(str(output)):
        return Path(output), None
    store = Storage.at(str(output))
    local = cache_dir(store.uri(), f"train-rank{rank}")
    shutil.rmtree(local, ignore_errors=True)
    if store.exists(store.path(STATE_JSON)):
        if not resume:
            raise UserError(already_holds(store.uri()))
        store.pull(store.root, local)
    local.mkdir(parents=True, exist_ok=True)
    return local, store


def already_holds(where) -> str:
    return f"{where} already holds a training checkpoint: pass --resume or a new --output"


def publish(local: Path, store: Storage | None) -> None:
    """Push a saved checkpoint (and the log) from the local mirror to the store."""
    if store is not None:
        store.push(local, store.root, first=(STATE_TENSORS,), last=(STATE_JSON,))
