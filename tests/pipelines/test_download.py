"""The download stage against a hostile loopback web: every failure lands in the right
ledger category, retries happen only where they should, and nothing stalls the run.

Private networks stay refused in these tests (``allow_private_networks`` off). The hostile
web is itself on 127.0.0.1, so the recipe lists its exact ``ip:port`` in
``private_allowlist``: the starting host is reachable, while a redirect to another
loopback port (a canary server that must see no request) or to the cloud metadata address
is refused after resolution, as it would be in production.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hostile_web import (HostileWeb, drip, hang, image, jpeg, partial, png, png_bomb_header, redirect,
                         status)
from clipcurate.pipelines.download.stage import Download
from clipcurate.pipelines.errors import RecipeError
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.pipelines.stage import REJECT

ROBOTS = b"User-agent: clipcurate\nDisallow: /private/\n\nUser-agent: *\nDisallow:\n"
TRUNCATED = jpeg((120, 90))[:400]
HTML = b"<!doctype html><html><body>Not found, but here is our homepage</body></html>"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _batch(urls: list[str]) -> pa.Table:
    return pa.table({"uid": [f"u{i}" for i in range(len(urls))], "url": urls,
                     "reject": pa.nulls(len(urls), pa.string())})


def test_hostile_web_through_the_runner(ray_local, tmp_path):
    canary = HostileWeb({"/secret.jpg": image(jpeg())}).start()
    closed = _closed_port()
    routes = {
        "/robots.txt": image(ROBOTS, "text/plain"),
        "/ok.jpg": image(jpeg()),
        "/ok.png": image(png(), "image/png"),
        "/octet.jpg": image(jpeg(), "application/octet-stream"),
        "/gone404.jpg": status(404),
        "/gone410.jpg": status(410),
        "/forbidden.jpg": status(403),
        "/rate429.jpg": [status(429, {"Retry-After": "1"}), image(jpeg())],
        "/flaky503.jpg": [status(503), image(jpeg())],
        "/always500.jpg": status(500),
        "/always429.jpg": status(429, {"Retry-After": "3600"}),
        "/loop-a.jpg": redirect("/loop-b.jpg"),
        "/loop-b.jpg": redirect("/loop-a.jpg"),
        "/moved.jpg": redirect("/ok.jpg", 301),
        "/to-private.jpg": redirect(canary.url("/secret.jpg")),
        "/to-metadata.jpg": redirect("http://169.254.169.254/latest/meta-data/iam"),
        # opted out in the headers; the body never finishes, so reading it would be a timeout
        "/noai.jpg": partial({"Content-Type": "image/jpeg", "X-Robots-Tag": "noai"}, 10_000_000, b"\xff\xd8\xff"),
        "/for-us.jpg": image(jpeg(), headers={"X-Robots-Tag": "clipcurate: noimageai"}),
        "/for-others.jpg": image(jpeg(), headers={"X-Robots-Tag": "otherbot: noai, noindex"}),
        "/private/photo.jpg": image(jpeg()),
        "/hang.jpg": hang(),
        "/bomb.png": image(png_bomb_header(), "image/png"),
        "/truncated.jpg": image(TRUNCATED),
        "/html-as-jpeg.jpg": image(HTML, "image/jpeg"),
        "/page.html": image(HTML, "text/html; charset=utf-8"),
        "/huge.jpg": partial({"Content-Type": "image/jpeg"}, 50_000_000, b"\xff\xd8\xff"),
        "/tiny.jpg": image(jpeg((8, 8))),
        "/caf%C3%A9%20au%20lait.jpg": image(jpeg()),  # requested as raw UTF-8 with spaces
    }
    expected = {  # path -> (reject, requests the server must have seen)
        "/ok.jpg": (None, None), "/ok.png": (None, 1), "/octet.jpg": (None, 1),
        "/gone404.jpg": ("http_4xx", 1), "/gone410.jpg": ("http_4xx", 1), "/forbidden.jpg": ("http_4xx", 1),
        "/rate429.jpg": (None, 2), "/flaky503.jpg": (None, 2), "/always500.jpg": ("http_5xx", 2),
        "/always429.jpg": ("http_4xx=429", 1),  # Retry-After beyond max_retry_after: give up, do not wait
        "/loop-a.jpg": ("redirect_loop", None), "/moved.jpg": (None, 1),
        "/to-private.jpg": ("private_address", 1), "/to-metadata.jpg": ("private_address", 1),
        "/noai.jpg": ("opt_out=x_robots_tag", 1), "/for-us.jpg": ("opt_out=x_robots_tag", 1),
        "/for-others.jpg": (None, 1), "/private/photo.jpg": ("opt_out=robots_txt", 0),
        "/hang.jpg": ("timeout", 2), "/bomb.png": ("too_large=pixels", 1),
        "/truncated.jpg": ("decode_error", 1), "/html-as-jpeg.jpg": ("not_image", 1),
        "/page.html": ("not_image=text/html", 1), "/huge.jpg": ("too_large=bytes", 1),
        "/tiny.jpg": ("too_small", 1),
    }
    with HostileWeb(routes) as web:
        urls = {web.url(path): want for path, want in expected.items()}
        urls.update({
            "ftp://example.com/cat.jpg": ("bad_scheme", None),
            "http://no-such-host.invalid/cat.jpg": ("dns", None),
            f"http://127.0.0.1:{closed}/cat.jpg": ("connect", None),
            "http://10.1.2.3/cat.jpg": ("private_address", None),
            web.url("/café au lait.jpg"): (None, None),
            f"http://{canary.endpoint}/secret.jpg": ("private_address", None),
        })
        pool = tmp_path / "pool.parquet"
        pq.write_table(pa.table({"url": list(urls), "caption": [f"caption {i}" for i in range(len(urls))]}), pool)
        recipe, stages = parse_recipe({"stages": [{"download": {
            "image_size": 32, "min_image_size": 16, "timeout": 3, "retries": 1, "backoff": 0.05,
            "max_retry_after": 5, "max_bytes": 1_000_000,
            "private_allowlist": [web.endpoint, f"127.0.0.1:{closed}"],
        }}]})
        started = time.monotonic()
        manifest = run_pipeline(recipe, stages, str(pool), str(tmp_path / "out"), RunOptions(progress=False))
        elapsed = time.monotonic() - started
        requests = dict(web.requests)
    canary.stop()

    totals = manifest["totals"]
    assert totals["input"] == len(urls) == totals["kept"] + totals["rejected"]
    rejects = {row["url"]: row[REJECT] for row in pq.read_table(tmp_path / "out" / "rejects").to_pylist()}
    kept = pq.read_table(tmp_path / "out" / "shards").to_pylist()
    got = {url: rejects.get(url) for url in urls}
    want = {url: None if reason is None else f"download:{reason}" for url, (reason, _) in urls.items()}
    assert got == want
    assert {row["url"] for row in kept} == {u for u, w in want.items() if w is None}
    assert all(row["image"] and min(row["width"], row["height"]) == 32 for row in kept)

    # retries only where they should be; nothing fetched that must not be
    for path, (_, count) in expected.items():
        if count is not None:
            assert requests.get(path, 0) == count, path
    assert requests["/loop-a.jpg"] == 1 and requests["/loop-b.jpg"] == 1
    assert requests["/ok.jpg"] == 2  # itself and the target of /moved.jpg
    assert 1 <= requests["/robots.txt"] <= 2  # once per host per worker
    assert canary.requests["/secret.jpg"] == 0
    assert requests["/caf%C3%A9%20au%20lait.jpg"] == 1

    download = manifest["stages"][1]
    assert download["rejected"] == sum(1 for w in want.values() if w)
    assert download["reasons"]["download:http_4xx"] == 4 and download["reasons"]["download:opt_out"] == 3
    assert elapsed < 120


def test_batch_deadline_bounds_a_hanging_host():
    """A partition's deadline: rows still hanging are timeouts and the batch returns on time."""
    with HostileWeb({"/hang.jpg": hang(), "/ok.jpg": image(jpeg())}) as web:
        stage = Download(timeout=60, retries=3, batch_deadline=1.5, respect_robots_txt=False,
                         private_allowlist=[web.endpoint])
        stage.ensure_setup()
        urls = [web.url("/hang.jpg")] * 3 + [web.url("/ok.jpg")]
        started = time.monotonic()
        out = stage(_batch(urls))
        elapsed = time.monotonic() - started
    reasons = out.column(REJECT).to_pylist()
    assert all(r.startswith("download:timeout") for r in reasons[:3]) and reasons[3] is None
    assert out.column("image").to_pylist()[3]
    # the served bytes' sha256, before the resize re-encodes them (what takedowns name)
    assert out.column("source_sha256").to_pylist() == [None] * 3 + [hashlib.sha256(jpeg()).hexdigest()]
    assert elapsed < 5
    assert web.requests["/hang.jpg"] == 3  # no retry past the deadline


def test_request_timeout_is_total_not_per_read():
    """A server that sends one byte at a time never trips a socket timeout; the request's
    total time limit still ends it."""
    with HostileWeb({"/drip.jpg": drip(jpeg(), every=0.1)}) as web:
        stage = Download(timeout=1.0, retries=0, respect_robots_txt=False, private_allowlist=[web.endpoint])
        stage.ensure_setup()
        started = time.monotonic()
        out = stage(_batch([web.url("/drip.jpg")]))
        elapsed = time.monotonic() - started
    assert out.column(REJECT).to_pylist() == ["download:timeout"]
    assert elapsed < 3


def test_per_host_concurrency_and_interval():
    with HostileWeb({f"/{i}.jpg": image(jpeg()) for i in range(6)}) as web:
        stage = Download(host_concurrency=1, host_min_interval=0.2, respect_robots_txt=False,
                         private_allowlist=[web.endpoint])
        stage.ensure_setup()
        out = stage(_batch([web.url(f"/{i}.jpg") for i in range(6)]))
        starts = sorted(t for times in web.starts.values() for t in times)
    assert out.column(REJECT).null_count == 6
    assert web.max_in_flight == 1
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # spacing is exact at the client; the server sees it with a little scheduling jitter
    assert len(starts) == 6 and starts[-1] - starts[0] >= 0.98 and min(gaps) >= 0.15


def test_retry_after_pauses_the_whole_host():
    """A 429 with Retry-After holds back the host's other requests, not only its own URL."""
    import threading

    from clipcurate.pipelines.download.fetch import Fetcher, FetchPolicy

    routes = {"/a.jpg": [status(429, {"Retry-After": "1"}), image(jpeg())], "/b.jpg": image(jpeg())}
    with HostileWeb(routes) as web:
        fetcher = Fetcher(FetchPolicy(respect_robots_txt=False, backoff=0.01,
                                      private_allowlist=frozenset({("127.0.0.1", web.port)})))
        results = {}
        first = threading.Thread(target=lambda: results.update(a=fetcher.fetch(web.url("/a.jpg"), time.monotonic() + 10)))
        first.start()
        deadline = time.monotonic() + 10
        # wait for the state, not a fixed time: the 429 has been answered and the host is paused
        while not any(host._next_start > time.monotonic() + 0.5 for host in list(fetcher._hosts.values())):
            assert time.monotonic() < deadline, "the 429 never paused the host"
            time.sleep(0.005)
        results["b"] = fetcher.fetch(web.url("/b.jpg"), time.monotonic() + 10)
        first.join()
    assert results["a"][1] is None and results["b"][1] is None
    assert web.requests["/a.jpg"] == 2 and web.requests["/b.jpg"] == 1
    assert web.starts["/b.jpg"][0] - web.starts["/a.jpg"][0] >= 0.95


def test_private_networks_refused_by_default():
    with HostileWeb({"/ok.jpg": image(jpeg())}) as web:
        stage = Download(respect_robots_txt=False)
        stage.ensure_setup()
        out = stage(_batch([web.url("/ok.jpg"), "http://[::1]:9/x.jpg", "http://169.254.169.254/latest/"]))
    assert out.column(REJECT).to_pylist() == ["download:private_address"] * 3
    assert web.requests["/ok.jpg"] == 0


def test_allowlist_entries_are_validated_with_the_recipe_key():
    with pytest.raises(RecipeError, match=r"stages\[0\]\.download\.private_allowlist"):
        parse_recipe({"stages": [{"download": {"private_allowlist": ["localhost:80"]}}]})
    _, (stage,) = parse_recipe({"stages": [{"download": {"private_allowlist": ["[::1]:8080", "127.0.0.1:80"]}}]})
    assert stage.config.private_allowlist == ["[::1]:8080", "127.0.0.1:80"]


def test_x_robots_tag_parsing_matches_img2dataset():
    from email.message import Message

    from img2dataset.downloader import is_disallowed as theirs

    from clipcurate.pipelines.download.fetch import is_disallowed as ours

    directives = {"noai", "noimageai", "noindex", "noimageindex"}
    cases = [[], ["noai"], ["NoImageAI"], ["nofollow"], ["noarchive, noindex"], ["clipcurate: noai"],
             ["otherbot: noai"], ["otherbot: noai", "nofollow"], ["otherbot: noai", "clipcurate: noindex"],
             ["unavailable_after: 25 Jun 2010 15:00:00 PST"], ["clipcurate: all"], [""]]
    for values in cases:
        headers = Message()
        for value in values:
            headers["X-Robots-Tag"] = value
        assert ours(headers, "clipcurate", directives) == theirs(headers, "clipcurate", directives), values


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_verifies_the_name_on_the_pinned_connection(tmp_path):
    """HTTPS goes to the checked address with SNI and certificate checks for the URL's host
    name; an untrusted certificate is connect=tls, not retried."""
    import ssl

    from clipcurate.pipelines.download.fetch import Fetcher, FetchPolicy

    cert, key = _self_signed(tmp_path)
    with HostileWeb({"/ok.jpg": image(jpeg())}, tls=(cert, key)) as web:
        allow = frozenset({("127.0.0.1", web.port), ("::1", web.port)})
        fetcher = Fetcher(FetchPolicy(respect_robots_txt=False, private_allowlist=allow, retries=2))
        body, reason = fetcher.fetch(web.url("/ok.jpg", host="localhost"), time.monotonic() + 10)
        assert (body, reason) == (None, "connect=tls")
        fetcher._ssl = ssl.create_default_context(cafile=cert)  # trust the test certificate
        body, reason = fetcher.fetch(web.url("/ok.jpg", host="localhost"), time.monotonic() + 10)
        assert reason is None and body == jpeg()
        body, reason = fetcher.fetch(web.url("/ok.jpg"), time.monotonic() + 10)  # name not in the certificate
        assert (body, reason) == (None, "connect=tls")
    assert web.requests["/ok.jpg"] == 1
