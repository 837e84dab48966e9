"""Issue 25's download attacks, each refused: IPv6 forms that carry a private IPv4
address, a body cut short of its Content-Length (transient, fetched again), and image
headers that declare far more pixels than the bytes hold (JPEG, GIF)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from hostile_web import HostileWeb, cut_short, gif_bomb_header, image, jpeg, jpeg_bomb_header
from clipcurate.pipelines.download import fetch
from clipcurate.pipelines.download.addresses import is_public
from clipcurate.pipelines.download.budget import holds_pixels
from clipcurate.pipelines.download.fetch import is_transient
from clipcurate.pipelines.download.stage import Download, _check_image
from clipcurate.pipelines.stage import REJECT
from test_download import _batch

EMBEDDED_PRIVATE = [
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",  # NAT64 local-use prefix: cannot be decoded, refused
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
    "::ffff:10.0.0.1",  # IPv4-mapped
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1 (obfuscated)
]
PUBLIC = ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", EMBEDDED_PRIVATE)
def test_ipv6_forms_carrying_a_private_ipv4_are_refused(address):
    assert not is_public(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_and_their_embeddings_pass(address):
    assert is_public(address)


def test_the_stage_refuses_embedded_forms_without_connecting(monkeypatch):
    connects = []
    monkeypatch.setattr(fetch, "_connect_any", lambda *a, **k: connects.append(a) or (_ for _ in ()).throw(OSError()))
    stage = Download(respect_robots_txt=False)
    stage.ensure_setup()
    out = stage(_batch([f"http://[{a}]/x.jpg" for a in EMBEDDED_PRIVATE]))
    assert out.column(REJECT).to_pylist() == ["download:private_address"] * len(EMBEDDED_PRIVATE)
    assert connects == []


def test_a_body_cut_short_is_a_transient_failure_fetched_again():
    body = jpeg((64, 64))
    with HostileWeb({"/cut.jpg": cut_short(body, len(body) // 2), "/ok.jpg": image(jpeg())}) as web:
        stage = Download(respect_robots_txt=False, retries=1, backoff=0.01, private_allowlist=[web.endpoint],
                         image_size=32, min_image_size=16)
        stage.ensure_setup()
        out = stage(_batch([web.url("/cut.jpg"), web.url("/ok.jpg")]))
        requests = dict(web.requests)
    assert out.column(REJECT).to_pylist() == ["download:connect=incomplete", None]
    assert requests["/cut.jpg"] == 2  # retried within the run
    assert is_transient("connect=incomplete")  # and by `curate retry` later


def test_headers_declaring_more_pixels_than_the_bytes_hold_are_refused_unread():
    bombs = {"/bomb.jpg": image(jpeg_bomb_header()), "/bomb.gif": image(gif_bomb_header(), "image/gif")}
    with HostileWeb(bombs) as web:
        stage = Download(respect_robots_txt=False, private_allowlist=[web.endpoint], image_size=32,
                         min_image_size=8)
        stage.ensure_setup()
        out = stage(_batch([web.url(p) for p in bombs]))
    assert out.column(REJECT).to_pylist() == ["download:too_large=pixels"] * 2
    assert max(len(jpeg_bomb_header()), len(gif_bomb_header())) < 2000  # 81 megapixels declared


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, fmt, options", [
    ("L", "JPEG", {"quality": 10, "progressive": True, "optimize": True}),
    ("RGB", "JPEG", {"quality": 75}),
    ("1", "PNG", {"optimize": True}),
    ("RGB", "PNG", {}),
    ("P", "GIF", {}),
    ("RGB", "WEBP", {"lossless": True}),
])
def test_the_flattest_real_images_fit_the_budget(mode, fmt, options):
    """One colour over 3000 x 3000: the most pixels per byte an encoder writes."""
    data = _encoded(Image.new(mode, (3000, 3000), 0), fmt, **options)
    assert holds_pixels(data, fmt, 3000, 3000)
    assert _check_image(data, 89_478_485, float("inf")) is None
