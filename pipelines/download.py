"""The download stage: URL -> encoded image bytes, on img2dataset's machinery.

img2dataset's fetcher (urllib, X-Robots-Tag opt-out read from the headers before
the body) and its Resizer (resize modes, re-encoding, min size / max area / max
aspect ratio) do the work; this stage adds what a pipeline needs around them: a
failure category for every row that did not download, a refusal of non-http(s)
URLs and of private, loopback and link-local addresses unless the recipe allows
them, and a check for truncated files that decoders would silently pad.
"""

from __future__ import annotations

import io
import ipaddress
import math
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipelines.stage import Resources, Stage, StageConfig, kept_mask, reject_rows, set_column

DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


class DownloadConfig(StageConfig):
    image_size: int = Field(256, gt=0)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(math.inf, gt=0)
    max_image_area: float = Field(math.inf, gt=0)
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0)
    thread_count: int = Field(32, gt=0)
    batch_size: int = Field(256, gt=0)
    user_agent_token: str = "clipcurate"
    disallowed_header_directives: list[str] = list(DIRECTIVES)
    allow_private_networks: bool = False


class Download(Stage):
    """Fetch and resize images with img2dataset; record a category for each failure."""

    name = "download"
    Config = DownloadConfig
    reads = ("url",)
    adds = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32(),
            "original_width": pa.int32(), "original_height": pa.int32()}

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=self.config.batch_size)

    def setup(self) -> None:
        from img2dataset.resizer import Resizer

        c = self.config
        self._resizer = Resizer(
            image_size=c.image_size, resize_mode=c.resize_mode, resize_only_if_bigger=c.resize_only_if_bigger,
            encode_format=c.encode_format, encode_quality=c.encode_quality if c.encode_format != "png" else 9,
            min_image_size=c.min_image_size, max_aspect_ratio=c.max_aspect_ratio, max_image_area=c.max_image_area,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        urls = batch.column("url").to_pylist()
        todo = np.flatnonzero(kept_mask(batch))
        images: list[bytes | None] = [None] * n
        sizes = np.zeros((n, 4), dtype=np.int64)
        reasons: list[str | None] = [None] * n
        # fetch in threads; resize here, one at a time, as img2dataset does (its resizer
        # redirects the process's stdout/stderr while decoding, which is not thread-safe)
        with ThreadPoolExecutor(max_workers=min(self.config.thread_count, max(1, len(todo)))) as pool:
            for i, (data, reason) in zip(todo, pool.map(self._fetch_one, [urls[i] for i in todo])):
                if data is not None:
                    data, size, reason = self._resize_one(data)
                    if size is not None:
                        sizes[i] = size
                images[i], reasons[i] = data, reason
        ok = np.array([img is not None for img in images])
        batch = set_column(batch, "image", pa.array(images, pa.binary()))
        for column, j in (("width", 0), ("height", 1), ("original_width", 2), ("original_height", 3)):
            batch = set_column(batch, column, pa.array(np.where(ok, sizes[:, j], 0), pa.int32(), mask=~ok))
        failed = np.array([r is not None for r in reasons])
        return reject_rows(batch, failed, [self.reason(r) if r else None for r in reasons])

    def _fetch_one(self, url: str) -> tuple[bytes | None, str | None]:
        from img2dataset.downloader import download_image_with_retry

        refusal = self._refuse(url)
        if refusal:
            return None, refusal
        _, stream, err = download_image_with_retry(
            (0, url), timeout=self.config.timeout, retries=self.config.retries,
            user_agent_token=self.config.user_agent_token,
            disallowed_header_directives=self.config.disallowed_header_directives,
        )
        if stream is None:
            return None, categorize_fetch_error(err or "")
        return stream.getvalue(), None

    def _resize_one(self, data: bytes):
        if is_truncated(data):
            return None, None, "decode_error"
        image, width, height, orig_w, orig_h, err = self._resizer(io.BytesIO(data))
        if err is not None or image is None:
            return None, None, categorize_resize_error(err or "")
        return image, (width, height, orig_w, orig_h), None

    def _refuse(self, url: str) -> str | None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "bad_scheme"
        if self.config.allow_private_networks:
            return None
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            return "dns"
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                return "private_address"
        return None


def categorize_fetch_error(err: str) -> str:
    """img2dataset reports failures as text; map them onto the failure ledger."""
    text = err.lower()
    if "x-robots-tag" in text:
        return "opt_out"
    if "http error 4" in text:
        return "http_4xx"
    if "http error 5" in text:
        return "http_5xx"
    if "redirect" in text or "http error 3" in text:
        return "redirect_loop"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "name or service" in text or "getaddrinfo" in text or "name resolution" in text or "nodename" in text:
        return "dns"
    if "refused" in text or "reset" in text or "unreachable" in text or "remote end closed" in text:
        return "connect"
    return "error"


def categorize_resize_error(err: str) -> str:
    text = err.lower()
    if "too small" in text:
        return "too_small"
    if "area too large" in text:
        return "too_large"
    if "aspect ratio" in text:
        return "aspect_ratio"
    return "decode_error"


def is_truncated(data: bytes) -> bool:
    """JPEG without its end-of-image marker or PNG without IEND: cut off in transfer."""
    if data[:3] == b"\xff\xd8\xff":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-16:]
    return False

