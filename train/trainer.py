"""The contrastive training loop: open_clip model and losses, our shards, resumable.

Follows open_clip's trainer (``open_clip_train``): AdamW with no weight decay on gains,
biases and the logit scale; cosine schedule with linear warmup (its ``cosine_lr``);
gradient clipping; autocast on CUDA; gradient accumulation that caches the features of
the other micro-batches so the contrastive loss still sees the whole batch (open_clip's
``accum_freq``, GradCache-style; unlike open_clip we count the logit scale's gradient
once, so the step equals the full-batch step); ``logit_scale`` clamped to ln(100) (Radford et al. 2021). One process
per call; ``train/distributed.py`` runs the same loop in N processes under Ray Train (DDP).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from open_clip_train.scheduler import cosine_lr

from clipcurate.pipelines.errors import UserError
from clipcurate.train import checkpoint
from clipcurate.train.data import ShardStream, loader, shard_files
from clipcurate.train.clip_model import resolve_device, unwrap
from clipcurate.train.model import create
from clipcurate.train.options import TrainConfig

LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    output: Path | str  # the checkpoint: a folder, or the object-store URI it was published to
    step: int
    loss: float
    samples_per_s: float
    wall_s: float


class TrainStep:
    """One optimizer step on one batch; the part ``bench/train.py`` times against a
    plain open_clip + ClipLoss step."""

    def __init__(self, model, loss_fn, optimizer, *, scheduler=None, precision: str = "fp32",
                 device_type: str = "cpu", accum: int = 1, grad_clip: float | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.accum = accum
        self.grad_clip = grad_clip
        dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(device_type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device_type) if precision == "amp_fp16" else None

    def __call__(self, images: torch.Tensor, texts: torch.Tensor, step: int) -> torch.Tensor:
        if self.scheduler is not None:
            self.scheduler(step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.accum == 1:
            with self.autocast():
                loss = self.loss_fn(**self.model(images, texts))
            self._backward(loss)
        else:
            loss = self._accumulated(images, texts)
        if self.scaler is not None:
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        with torch.no_grad():
            unwrap(self.model).logit_scale.clamp_(0, math.log(100))
        return loss.detach()

    def _accumulated(self, images, texts) -> torch.Tensor:
        image_chunks, text_chunks = images.chunk(self.accum), texts.chunk(self.accum)
        with torch.no_grad(), self.autocast():
            cached = [self.model(i, t) for i, t in zip(image_chunks, text_chunks)]
        total = 0.0
        for j, (i, t) in enumerate(zip(image_chunks, text_chunks)):
            with self.autocast():
                out = self.model(i, t)
                # the scale and bias get their gradient once, not once per micro-batch
                inputs = {k: v if j == 0 else v.detach() for k, v in out.items()
                          if k in ("logit_scale", "logit_bias")}
                for key in ("image_features", "text_features"):
                    inputs[key] = torch.cat([c[key] for c in cached[:j]] + [out[key]]
                                            + [c[key] for c in cached[j + 1:]])
                loss = self.loss_fn(**inputs)
            self._backward(loss)
            total = loss.detach()
        return total

    def _backward(self, loss):
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()


def build_loss(name: str, *, rank: int = 0, world_size: int = 1) -> torch.nn.Module:
    """open_clip's losses with their distributed options (gather features across ranks)."""
    if name == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    return ClipLoss(local_loss=world_size > 1, gather_with_grad=world_size > 1, cache_labels=True,
                    rank=rank, world_size=world_size)


def build_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no decay on gains, biases, norms and logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(param)
    devices = {p.device.type for p in decay + no_decay}
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": config.wd}],
        lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
        fused=devices <= {"cpu", "cuda"} or None)  # one kernel per step: on CPU 3x faster than the loop


def fit_worker(config: TrainConfig, *, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
               wrap=None, gather=None) -> TrainResult:
    """The loop of one process. ``wrap`` puts the model in DDP; ``gather`` collects every
    rank's data positions for the checkpoint (both from Ray Train when distributed).

    On CPU a run is bitwise reproducible for a given seed, data and thread count (the
    order of parallel reductions follows the thread count): ``threads`` pins it.
    """
    with torch_threads(config.threads):
        return _fit_worker(config, rank=rank, world_size=world_size, device=device, wrap=wrap, gather=gather)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` torch CPU threads (None: as set), then restore the setting."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_worker(config: TrainConfig, *, rank: int, world_size: int, device: torch.device | None,
                wrap, gather) -> TrainResult:
    started = time.perf_counter()
    output, remote = checkpoint.staged(config.output, rank, resume=config.resume)
    shown = remote.uri() if remote is not None else output
    device = device or resolve_device(config.device)
    precision = config.precision
    if precision == "auto":
        precision = "amp_bf16" if device.type == "cuda" else "fp32"
    files = shard_files(config.data)
    resume = checkpoint.exists(output) if config.resume else False
    if output.exists() and checkpoint.exists(output) and not config.resume:
        raise UserError(checkpoint.already_holds(output))
    torch.manual_seed(config.seed)

    bundle = create(output if resume else config.model, loss=config.loss, pretrained=config.pretrained,
                    lock_text=config.lock_text, augment=config.augment, device=device)
    model = bundle.model
    model.output_dict = True
    optimizer = build_optimizer(model, config)
    layout = {"world_size": world_size, "workers_per_rank": max(config.workers, 1)}
    step, positions = 0, {}
    if resume:
        state = checkpoint.load(output)
        if state.layout != layout:
            raise UserError(f"checkpoint data layout {state.layout} differs from this run's {layout}: "
                            "resume with the same number of ranks and --workers")
        step, positions = state.step, state.positions
        optimizer.load_state_dict(state.tensors["optimizer"])
        torch.set_rng_state(state.tensors["torch_rng"])
        if "cuda_rng" in state.tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.tensors["cuda_rng"])
    if wrap is not None:
        model = wrap(model)

    stream = ShardStream(files, preprocess=bundle.preprocess_train, tokenizer=bundle.tokenizer,
                         batch_size=config.batch_size, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                         rank=rank, world_size=world_size, num_workers=config.workers,
                         start_positions=positions)
    total_rows = sum(u.rows for u in stream.units)
    total_steps = config.steps or max(1, math.ceil(config.epochs * total_rows / (config.batch_size * world_size)))
    warmup = config.warmup if config.warmup is not None else total_steps // 20
    if warmup >= total_steps:
        raise UserError(f"warmup ({warmup}) must be shorter than the run ({total_steps} steps)")
    scheduler = cosine_lr(optimizer, config.lr, warmup, total_steps)
    train_step = TrainStep(model, build_loss(config.loss, rank=rank, world_size=world_size), optimizer,
                           scheduler=scheduler, precision=precision, device_type=device.type,
                           accum=config.accum, grad_clip=config.grad_clip)
    if resume and "scaler" in state.tensors and train_step.scaler is not None:
        train_step.scaler.load_state_dict(state.tensors["scaler"])
    end_step = min(total_steps, config.stop_after or total_steps)
    is_main = rank == 0
    log = open(output / LOG_FILE, "a") if is_main and _mkdir(output) else None

    def save(final: bool = False):
        every = gather(positions) if gather else positions
        if is_main:
            info = {"loss": last_loss, "total_steps": total_steps, "threads": torch.get_num_threads(),
                    "config": config.model_dump(mode="json")}
            if final:
                info.update(samples_per_s=round(samples_total / train_time, 3) if train_time else 0.0,
                            wall_s=round(time.perf_counter() - started, 3))
            checkpoint.save(output, model=model, config=bundle.config, tokenizer=bundle.tokenizer,
                            optimizer=optimizer, step=step, positions=every, layout=layout,
                            scaler=train_step.scaler, info=info)
            if log is not None:
                log.flush()
            checkpoint.publish(output, remote)

    _set_train_mode(model, config.lock_text)
    last_loss, window_start, window_steps = float("nan"), time.perf_counter(), 0
    samples_total, train_time = 0, 0.0
    batches = iter(loader(stream, config.workers)) if step < end_step else iter(())
    for batch in batches:
        images = batch.images.to(device, non_blocking=True)
        texts = batch.texts.to(device, non_blocking=True)
        loss = train_step(images, texts, step)
        step += 1
        window_steps += 1
        positions[batch.worker] = batch.position
        if step % config.log_every == 0 or step == end_step:
            last_loss = float(loss)
            elapsed = time.perf_counter() - window_start
            rate = window_steps * config.batch_size * world_size / max(elapsed, 1e-9)
            samples_total += window_steps * config.batch_size * world_size
            train_time += elapsed
            record = {"step": step, "total_steps": total_steps, "loss": round(last_loss, 6),
                      "lr": optimizer.param_groups[0]["lr"], "samples_per_s": round(rate, 2),
                      "wall_s": round(time.perf_counter() - started, 3)}
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
                if not config.quiet:
                    print(f"step {step}/{total_steps}  loss {last_loss:.4f}  lr {record['lr']:.2e}  "
                          f"{rate:.1f} samples/s", flush=True)
            window_start, window_steps = time.perf_counter(), 0
        if config.save_every and step % config.save_every == 0 and step < end_step:
            save()
        if step >= end_step:
            break
    save(final=True)
    if log is not None:
        log.close()
    return TrainResult(output=shown, step=step, loss=last_loss,
                       samples_per_s=samples_total / train_time if train_time else 0.0,
                       wall_s=time.perf_counter() - started)


def _set_train_mode(model, lock_text: bool) -> None:
    """Train mode, except a locked text tower stays in eval (fixed features, no dropout:
    LiT's locked tower is a fixed function)."""
    model.train()
    text = getattr(unwrap(model), "text", None)
    if lock_text and text is not None:
        text.eval()


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True
