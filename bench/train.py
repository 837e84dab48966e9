"""Our train step vs a step written directly with open_clip (model + ClipLoss + AdamW).

Both start from the same weights and see the same in-memory batches (coloured-shape
images through the model's transforms, their captions through its tokenizer), with the
same optimizer recipe (AdamW, open_clip's no-decay rule, open_clip_train's cosine_lr,
grad-norm clip 1.0, logit-scale clamp). Timed in interleaved rounds so machine load hits
both alike. Prints samples/s of each, the ratio (ours / reference, want >= 0.95) and the
largest loss difference over all steps (want <= 1e-4). Last line: one JSON object.

    .venv/bin/python bench/train.py                      # clip-tiny, CPU, batch 64
    .venv/bin/python bench/train.py --model ViT-B-32 --device cuda --precision amp_bf16 --batch-size 512
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402
from open_clip_train.scheduler import cosine_lr  # noqa: E402

from clipcurate.train import datasets  # noqa: E402
from clipcurate.train.model import create  # noqa: E402
from clipcurate.train.options import TrainConfig  # noqa: E402
from clipcurate.train.trainer import TrainStep, build_loss, build_optimizer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clip-tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per implementation")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--batches", type=int, default=4, help="distinct in-memory batches, cycled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "amp_fp16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch default; 1 is steadiest on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    bundle = create(args.model, device=device)
    size = bundle.config["preprocess_cfg"]["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    images, _, captions = datasets.shapes(args.batches * args.batch_size, seed=0, size=size)
    batches = []
    for b in range(args.batches):
        chunk = slice(b * args.batch_size, (b + 1) * args.batch_size)
        pixels = torch.stack([bundle.preprocess_train(i) for i in images[chunk]]).to(device)
        batches.append((pixels, bundle.tokenizer(captions[chunk]).to(device)))

    total = args.steps + 2
    config = TrainConfig(data="in-memory", output="unused", steps=total, lr=5e-4, warmup=2, precision=args.precision)
    ours_model = bundle.model
    ref_model = copy.deepcopy(ours_model)
    ours_model.output_dict = True
    ours_opt = build_optimizer(ours_model, config)
    ours = TrainStep(ours_model, build_loss("clip"), ours_opt, scheduler=cosine_lr(ours_opt, config.lr, 2, total),
                     precision=args.precision, device_type=device.type, grad_clip=1.0)
    reference = ReferenceStep(ref_model, config, total, args.precision, device.type)

    losses = {"ours": [], "reference": []}
    seconds = {"ours": 0.0, "reference": 0.0}
    steps = {"ours": 0, "reference": 0}
    runners = {"ours": lambda i, s: ours(*batches[i % len(batches)], s),
               "reference": lambda i, s: reference(*batches[i % len(batches)], s)}

    def run(name, count, timed):
        for _ in range(count):
            step = steps[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = runners[name](step, step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if timed:
                seconds[name] += time.perf_counter() - start
            losses[name].append(float(loss))
            steps[name] += 1

    for name in runners:  # warm-up (allocator, kernels), not timed
        run(name, 2, timed=False)
    per_round = math.ceil(args.steps / args.rounds)
    for r in range(args.rounds):
        order = ("ours", "reference") if r % 2 == 0 else ("reference", "ours")
        for name in order:
            run(name, min(per_round, total - steps[name]), timed=True)

    rate = {n: (steps[n] - 2) * args.batch_size / seconds[n] for n in runners}
    diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["reference"]))
    print(f"model {args.model}  batch {args.batch_size}  device {device}  precision {args.precision}  "
          f"threads {torch.get_num_threads()}")
    print(f"ours       {rate['ours']:.1f} samples/s   first/last loss {losses['ours'][0]:.5f} / {losses['ours'][-1]:.5f}")
    print(f"reference  {rate['reference']:.1f} samples/s   first/last loss {losses['reference'][0]:.5f} / "
          f"{losses['reference'][-1]:.5f}")
    print(f"max |loss difference| over {len(losses['ours'])} identical batches: {diff:.2e}")
    print(json.dumps({"bench": "train_step", "model": args.model, "batch_size": args.batch_size,
                      "device": str(device), "precision": args.precision,
                      "ours_samples_per_s": round(rate["ours"], 2),
                      "reference_samples_per_s": round(rate["reference"], 2),
                      "ratio": round(rate["ours"] / rate["reference"], 4),
                      "max_loss_diff": diff, "losses_equal_1e-4": diff <= 1e-4, "steps": steps["ours"]}))
    return 0


class ReferenceStep:
    """A training step as one writes it straight from open_clip's README and trainer."""

    def __init__(self, model, config: TrainConfig, total: int, precision: str, device_type: str):
        self.model = model
        self.loss = ClipLoss()
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = list(model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": config.wd}],
            lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
        self.scheduler = cosine_lr(self.optimizer, config.lr, 2, total)
        dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(precision)
        self.dtype, self.device_type = dtype, device_type
        self.scaler = torch.amp.GradScaler(device_type) if precision == "amp_fp16" else None

    def __call__(self, images, texts, step):
        self.scheduler(step)
        self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            image_features, text_features, logit_scale = self.model(images, texts)
            loss = self.loss(image_features, text_features, logit_scale)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()


if __name__ == "__main__":
    sys.exit(main())
