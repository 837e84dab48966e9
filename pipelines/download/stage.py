"""The download stage: URL -> encoded image bytes, with a reason for every failure.

img2dataset stays the engine for what it does well: its Resizer (resize modes, re-encoding,
min size / max area / max aspect ratio; loaded without the img2dataset package, which
imports torch) and its ``X-Robots-Tag`` rules. The fetch itself is ``download.fetch``
(img2dataset's ``urllib.urlopen`` cannot check an address after DNS or a redirect): robots.txt and ``X-Robots-Tag`` opt-outs honoured before the
body is read, per-host concurrency and spacing, ``Retry-After``, bounded retries for
transient failures only, and refusal of private, loopback, link-local and metadata
addresses after DNS and after every redirect. Around both, this stage adds a batch
deadline (a hanging host cannot stall the end of a run: what did not finish is
``download:timeout``), a decompression-bomb guard (the header's pixel count against
``max_pixels`` and against what the bytes received can encode, ``download.budget``, before
decoding), a sniff for HTML served as an image, and a check for truncated files that
decoders would silently pad.

Failure ledger (``reject`` = ``download:<category>[=detail]``): dns, connect
(``connect=incomplete``: the body ended before its Content-Length, retried), timeout,
http_4xx (``http_4xx=429`` when rate limited), http_5xx, opt_out, not_image,
decode_error, too_small, too_large, private_address (a recipe allows such hosts with
``allow_private_networks`` or ``private_allowlist``), redirect_loop, bad_scheme,
aspect_ratio. ``curate retry OUT`` re-fetches the transient ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import os
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from clipcurate.pipelines.download.budget import holds_pixels
from clipcurate.pipelines.stage import Resources, Stage, StageConfig, kept_mask, reject_rows, set_column

DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00")


class DownloadConfig(StageConfig):
    # resize and encode: img2dataset's options, same meaning
    image_size: int = Field(256, gt=0)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(math.inf, gt=0)
    max_image_area: float = Field(math.inf, gt=0)
    max_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb guard (Pillow's default)")
    # fetch
    timeout: float = Field(10.0, gt=0, description="seconds for one whole request, connect to last byte")
    retries: int = Field(2, ge=0, description="extra attempts for transient failures only")
    backoff: float = Field(1.0, ge=0, description="base seconds of full-jitter exponential backoff")
    max_retry_after: float = Field(60.0, ge=0, description="a longer Retry-After gives up instead of waiting")
    max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_redirects: int = Field(5, ge=0)
    batch_deadline: float = Field(300.0, gt=0, description="seconds per batch; unfinished rows are timeouts")
    thread_count: int = Field(32, gt=0)
    batch_size: int = Field(256, gt=0)
    # politeness and opt-out
    user_agent_token: str = "clipcurate"
    disallowed_header_directives: list[str] = list(DIRECTIVES)
    respect_robots_txt: bool = True
    host_concurrency: int = Field(16, gt=0, description="requests in flight per host, per worker")
    host_min_interval: float = Field(0.0, ge=0, description="seconds between request starts per host, per worker")
    # safety
    allow_private_networks: bool = False
    private_allowlist: list[str] = Field(
        default_factory=list, description="exact 'ip:port' endpoints allowed even when private networks are not")

    @field_validator("private_allowlist")
    @classmethod
    def _canonical_endpoints(cls, entries: list[str]) -> list[str]:
        return [_endpoint(entry) for entry in entries]


class Download(Stage):
    """Fetch politely and safely, resize with img2dataset; a ledger category for each failure."""

    name = "download"
    Config = DownloadConfig
    checkpoint = True
    speed_params = ("thread_count", "batch_size")
    reads = ("url",)
    # source_sha256: of the bytes as served, before the resize re-encodes them (img2dataset's
    # compute_hash): what a takedown request names, and what a blocklist matches
    adds = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32(),
            "original_width": pa.int32(), "original_height": pa.int32(), "source_sha256": pa.string()}

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=self.config.batch_size)

    def setup(self) -> None:
        from clipcurate.pipelines.download.fetch import Fetcher, FetchPolicy

        c = self.config
        self._resizer = _resizer_class()(
            image_size=c.image_size, resize_mode=c.resize_mode, resize_only_if_bigger=c.resize_only_if_bigger,
            encode_format=c.encode_format, encode_quality=c.encode_quality if c.encode_format != "png" else 9,
            min_image_size=c.min_image_size, max_aspect_ratio=c.max_aspect_ratio, max_image_area=c.max_image_area,
        )
        self._fetcher = Fetcher(FetchPolicy(
            timeout=c.timeout, retries=c.retries, backoff=c.backoff, max_retry_after=c.max_retry_after,
            max_bytes=c.max_bytes, max_redirects=c.max_redirects, user_agent_token=c.user_agent_token,
            disallowed_header_directives=frozenset(c.disallowed_header_directives),
            respect_robots_txt=c.respect_robots_txt, host_concurrency=c.host_concurrency,
            host_min_interval=c.host_min_interval, allow_private_networks=c.allow_private_networks,
            private_allowlist=frozenset((e.rpartition(":")[0].strip("[]"), int(e.rpartition(":")[2]))
                                        for e in c.private_allowlist),
        ))
        self._pool = ThreadPoolExecutor(max_workers=c.thread_count, thread_name_prefix="download")

    def __getstate__(self) -> dict:
        # ship the configuration, not a worker's threads and sockets
        state = {k: v for k, v in self.__dict__.items() if k not in ("_resizer", "_fetcher", "_pool")}
        state["_ready"] = False
        return state

    def __call__(self, batch: pa.Table) -> pa.Table:
        deadline = time.monotonic() + self.config.batch_deadline
        n = batch.num_rows
        urls = batch.column("url").to_pylist()
        images: list[bytes | None] = [None] * n
        sources: list[str | None] = [None] * n
        sizes = np.zeros((n, 4), dtype=np.int64)
        reasons: list[str | None] = [None] * n
        order = _interleave_hosts(urls, np.flatnonzero(kept_mask(batch)))
        futures = {self._pool.submit(self._fetcher.fetch, urls[i], deadline): i for i in order}
        pending = set(futures)
        # fetch in threads; decode and resize here, one at a time, as img2dataset does (its
        # resizer redirects the process's stdout/stderr while decoding: not thread-safe)
        while pending:
            done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                i = futures[future]
                data, reason = future.result()
                if data is not None:
                    sources[i] = hashlib.sha256(data).hexdigest()
                    data, size, reason = self._resize_one(data)
                    if size is not None:
                        sizes[i] = size
                images[i], reasons[i] = data, reason
        for future in pending:  # past the deadline: the threads give up on their own
            future.cancel()
            reasons[futures[future]] = "timeout=batch_deadline"
        ok = np.array([img is not None for img in images], dtype=bool)
        batch = set_column(batch, "image", pa.array(images, pa.binary()))
        for column, j in (("width", 0), ("height", 1), ("original_width", 2), ("original_height", 3)):
            batch = set_column(batch, column, pa.array(np.where(ok, sizes[:, j], 0), pa.int32(), mask=~ok))
        batch = set_column(batch, "source_sha256", pa.array([h if k else None for h, k in zip(sources, ok)], pa.string()))
        failed = np.array([r is not None for r in reasons], dtype=bool)
        return reject_rows(batch, failed, [self.reason(r) if r else None for r in reasons])

    def _resize_one(self, data: bytes):
        reason = _check_image(data, self.config.max_pixels, self.config.max_image_area)
        if reason is not None:
            return None, None, reason
        image, width, height, orig_w, orig_h, err = self._resizer(io.BytesIO(data))
        if err is not None or image is None:
            return None, None, categorize_resize_error(err or "")
        return image, (width, height, orig_w, orig_h), None


def categorize_resize_error(err: str) -> str:
    """img2dataset's Resizer reports failures as text; map them onto the ledger."""
    text = err.lower()
    if "too small" in text:
        return "too_small"
    if "area too large" in text:
        return "too_large"
    if "aspect ratio" in text:
        return "aspect_ratio"
    return "decode_error"


def _check_image(data: bytes, max_pixels: int, max_area: float) -> str | None:
    """Before a full decode: a document that is not an image, a pixel count from the header
    beyond the bomb guard or beyond what the bytes can encode (``budget``), or a file cut
    off in transfer."""
    from PIL import Image, UnidentifiedImageError

    if looks_like_text(data):
        return "not_image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # lazy: reads the header only
                width, height = header.size
                fmt = header.format
    except Image.DecompressionBombError:
        return "too_large=pixels"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "decode_error"
    if width * height > max_pixels or not holds_pixels(data, fmt, width, height):
        return "too_large=pixels"
    if width * height > max_area:
        return "too_large"
    if is_truncated(data):
        return "decode_error"
    return None


def looks_like_text(data: bytes) -> bool:
    """HTML, JSON or plain text (an error page served with an image content type): the
    head is valid UTF-8 without control characters, or nearly all printable ASCII. Random
    or corrupt binary is neither (it is a decode_error)."""
    head = data[:512]
    if head.startswith(IMAGE_MAGIC):
        return False
    if not head.strip():
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        text = head[:err.start].decode("utf-8") if err.start >= len(head) - 3 else None
    if text is not None and not any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return True
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable >= 0.9 * len(head)


def is_truncated(data: bytes) -> bool:
    """JPEG without its end-of-image marker or PNG without IEND: cut off in transfer."""
    if data[:3] == b"\xff\xd8\xff":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-16:]
    return False


def _interleave_hosts(urls: list[str], rows: np.ndarray) -> list[int]:
    """Round-robin over hosts, so one slow or rate-limited host does not hold every thread
    while other hosts wait in the queue."""
    seen: Counter[str] = Counter()
    keyed = []
    for i in rows:
        url = urls[i] or ""
        host = url.split("/", 3)[2] if url.count("/") >= 2 else url
        keyed.append((seen[host], int(i)))
        seen[host] += 1
    return [i for _, i in sorted(keyed)]


def _resizer_class() -> type:
    """img2dataset's Resizer, without importing the img2dataset package.

    ``img2dataset/__init__`` imports its whole CLI (writers -> webdataset -> torch): 4-8 s
    at every worker start, for nothing a download needs. ``resizer.py`` itself needs only
    cv2, albumentations and numpy and has no package-relative import, so that one file is
    loaded on its own; if a future img2dataset changes that, the plain import is used.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI request per worker start
    loaded = sys.modules.get("img2dataset.resizer") or sys.modules.get(_RESIZER_MODULE)
    if loaded is not None:
        return loaded.Resizer
    try:
        package = importlib.util.find_spec("img2dataset")  # finds, does not run __init__
        spec = importlib.util.spec_from_file_location(
            _RESIZER_MODULE, os.path.join(package.submodule_search_locations[0], "resizer.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        from img2dataset.resizer import Resizer

        return Resizer
    sys.modules[_RESIZER_MODULE] = module
    return module.Resizer


_RESIZER_MODULE = "_clipcurate_img2dataset_resizer"


def _endpoint(text: str) -> str:
    """``ip:port`` (``[v6]:port``) in canonical form; the check matches resolved addresses."""
    import ipaddress

    host, _, port = text.strip().rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{text!r} is not 'ip:port' (an IP address, not a host name)") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not 'ip:port'")
    return f"[{address}]:{int(port)}" if address.version == 6 else f"{address}:{int(port)}"
