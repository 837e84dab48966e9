"""LiT on Fashion-MNIST: train a tiny image tower against the locked all-MiniLM-L6-v2
text tower on templated captions, then zero-shot classify the 10k test images.

Steps: write the 60k training images as a run's shards (captions like "a photo of a
sneaker."), train ``lit-tiny`` with ``lock_text`` through ``train.api.train``, evaluate
with ``train.api.evaluate`` (class names x 8 generic prompt templates, not the training
ones) and compare with the same model before training (chance is 0.1). Then reload the
checkpoint in plain open_clip (``local-dir:``) and check its embeddings are identical to
our loader's. Expected: top-1 >= 0.8. Last line: one JSON object.

    .venv/bin/python bench/zeroshot.py [--steps 300] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clipcurate.train import datasets  # noqa: E402
from clipcurate.train.api import evaluate, train  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/clipcurate-bench-zeroshot")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)

    started = time.perf_counter()
    train_images, train_labels = datasets.fashion_mnist("train")
    test_images, test_labels = datasets.fashion_mnist("test")
    datasets.write_shards(work / "run", list(train_images), datasets.fashion_mnist_captions(train_labels, seed=0),
                          rows_per_shard=15_000, row_group_size=2_000)
    names = [datasets.FASHION_MNIST_CLASSES[c] for c in test_labels]
    datasets.write_labeled(work / "test.parquet", list(test_images), names,
                           datasets.fashion_mnist_captions(test_labels, seed=1))
    data_s = time.perf_counter() - started
    print(f"wrote 60000 training pairs as shards and 10000 labeled test images in {data_s:.1f}s", flush=True)

    before = evaluate("lit-tiny", work / "test.parquet")
    print(f"before training: zero-shot top-1 {before['zeroshot_top1']:.4f}", flush=True)
    t0 = time.perf_counter()
    result = train(work / "run", "lit-tiny", output=work / "ckpt", steps=args.steps, batch_size=args.batch_size,
                   lr=args.lr, lock_text=True, workers=args.workers, log_every=25)
    train_s = time.perf_counter() - t0
    after = evaluate(result.output, work / "test.parquet")
    print(f"after {result.step} steps ({train_s:.0f}s, {result.samples_per_s:.0f} samples/s): "
          f"zero-shot top-1 {after['zeroshot_top1']:.4f}  top-5 {after['zeroshot_top5']:.4f}  "
          f"retrieval i2t R@10 {after['i2t_recall@10']:.3f}", flush=True)

    reload = compare_reload(result.output, test_images[:64])
    print(f"plain open_clip reload: max |embedding difference| image {reload['image']:.1e} "
          f"text {reload['text']:.1e}", flush=True)
    identical = reload["image"] == 0.0 and reload["text"] == 0.0
    print(json.dumps({"bench": "zeroshot_lit_fashion_mnist", "model": "lit-tiny", "steps": result.step,
                      "batch_size": args.batch_size, "train_s": round(train_s, 1),
                      "samples_per_s": round(result.samples_per_s, 1),
                      "zeroshot_top1": after["zeroshot_top1"], "zeroshot_top5": after["zeroshot_top5"],
                      "zeroshot_top1_before": before["zeroshot_top1"], "chance": 0.1,
                      "i2t_recall@1": after["i2t_recall@1"], "t2i_recall@1": after["t2i_recall@1"],
                      "reaches_0.8": after["zeroshot_top1"] >= 0.8, "reload_identical": identical,
                      "wall_s": round(time.perf_counter() - started, 1)}))
    return 0


def compare_reload(checkpoint: Path, images: np.ndarray) -> dict:
    """Embeddings from plain open_clip (``local-dir:``) vs our loader, same inputs."""
    import open_clip
    from PIL import Image

    from clipcurate.train.model import create

    plain, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(checkpoint))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(checkpoint))
    ours = create(checkpoint)
    plain.eval(), ours.model.eval()
    texts = [f"a photo of a {c}." for c in datasets.FASHION_MNIST_CLASSES]
    pil = [Image.fromarray(i).convert("RGB") for i in images]
    with torch.no_grad():
        image_diff = (plain.encode_image(torch.stack([preprocess(i) for i in pil]))
                      - ours.model.encode_image(torch.stack([ours.preprocess_val(i) for i in pil]))).abs().max()
        text_diff = (plain.encode_text(tokenizer(texts)) - ours.model.encode_text(ours.tokenizer(texts))).abs().max()
    return {"image": float(image_diff), "text": float(text_diff)}


if __name__ == "__main__":
    sys.exit(main())
