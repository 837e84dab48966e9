"""A new embedding-based filter is one small class over the shared encoder
(``train/clip_model.Encoder``): no model loading, decoding or batching code of its own."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from clipcurate.curation.sampleweb import generate_samples
from clipcurate.pipelines.stage import Stage, StageConfig, kept_mask, reject_rows, set_column
from clipcurate.train.clip_model import Encoder, load_clip


class PromptConfig(StageConfig):
    model: str
    prompt: str
    max_similarity: float


class LooksLikePrompt(Stage):
    """Rejects images whose embedding is closer than ``max_similarity`` to a text prompt
    (say "a page of text"): the whole filter."""

    name = "looks_like_prompt"
    Config = PromptConfig
    reads = ("image",)
    adds = {"prompt_similarity": pa.float32()}

    def setup(self) -> None:
        self.encoder = Encoder(self.config.model)
        self.prompt = self.encoder.texts([self.config.prompt])[0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        rows = np.flatnonzero(kept_mask(batch))
        encoded = self.encoder.images(batch.column("image").take(pa.array(rows)).to_pylist())
        similarity = np.full(batch.num_rows, np.nan, np.float32)
        similarity[rows[encoded.decoded]] = encoded.image @ self.prompt
        batch = set_column(batch, "prompt_similarity", pa.array(similarity, from_pandas=True))
        return reject_rows(batch, similarity > self.config.max_similarity, self.reason("too_close"))


def test_an_embedding_filter_is_one_small_class():
    samples = [s for s in generate_samples(12, seed=5) if s.body is not None]
    batch = pa.table({"uid": [str(i) for i in range(len(samples))], "image": [s.body for s in samples],
                      "reject": pa.nulls(len(samples), pa.string())})
    stage = LooksLikePrompt(model="clip-tiny", prompt="a page of text", max_similarity=0.0)
    out = stage(batch)
    # the same numbers as plain open_clip with the same (seeded) weights
    clip = load_clip("clip-tiny")
    with torch.no_grad():
        pixels = torch.stack([clip.preprocess(Image.open(io.BytesIO(s.body))) for s in samples])
        image = clip.model.encode_image(pixels, normalize=True)
        text = clip.model.encode_text(clip.tokenizer(["a page of text"]), normalize=True)[0]
    np.testing.assert_allclose(out.column("prompt_similarity").to_numpy(), (image @ text).numpy(), atol=1e-5)
    rejected = [r is not None for r in out.column("reject").to_pylist()]
    assert rejected == list(out.column("prompt_similarity").to_numpy() > 0.0)
