"""``curate retry``: servers that were down during a run come back; only the transiently
failed samples are fetched again and recovered, every other row stays as it was.

Both runs are inline (the runner's resume is the same code on Ray; the download stage on
Ray is covered by test_download.py and test_runner.py)."""

from __future__ import annotations

import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hostile_web import HostileWeb, hang, image, jpeg, status
from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.manifest import format_funnel, retry_hint
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline

ROBOTS = b"User-agent: *\nDisallow: /private/\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rows(folder) -> dict[str, dict]:
    return {row["url"]: row for row in pq.read_table(folder).to_pylist()}


def test_retry_recovers_only_transient_failures(tmp_path, capsys, monkeypatch):
    down_port = _free_port()  # nothing listens here during the first run
    routes = {
        "/robots.txt": image(ROBOTS, "text/plain"),
        **{f"/ok-{i}.jpg": image(jpeg(colour=(10 * i, 90, 90))) for i in range(4)},
        "/gone.jpg": status(404),
        "/private/x.jpg": image(jpeg()),
        "/busy-0.jpg": status(503), "/busy-1.jpg": status(500),
        "/slow.jpg": hang(),
        "/limited.jpg": status(429, {"Retry-After": "3600"}),
    }
    with HostileWeb(routes) as web:
        urls = [web.url(p) for p in routes if p != "/robots.txt"] + [f"http://127.0.0.1:{down_port}/back.jpg"]
        pool = tmp_path / "pool.parquet"
        pq.write_table(pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]}), pool)
        recipe, stages = parse_recipe({"input": {"partition_size": 5}, "stages": [{"download": {
            "image_size": 32, "timeout": 2, "retries": 1, "backoff": 0.01, "max_retry_after": 5,
            "private_allowlist": [web.endpoint, f"127.0.0.1:{down_port}"]}}]})
        out = tmp_path / "out"
        first = run_pipeline(recipe, stages, str(pool), str(out), RunOptions(inline=True, progress=False))
        before_kept, before_rejects = _rows(out / "shards"), _rows(out / "rejects")
        assert {u: r["reject"] for u, r in before_rejects.items()} == {
            web.url("/gone.jpg"): "download:http_4xx",
            web.url("/private/x.jpg"): "download:opt_out=robots_txt",
            web.url("/busy-0.jpg"): "download:http_5xx",
            web.url("/busy-1.jpg"): "download:http_5xx",
            web.url("/slow.jpg"): "download:timeout",
            web.url("/limited.jpg"): "download:http_4xx=429",
            f"http://127.0.0.1:{down_port}/back.jpg": "download:connect",
        }
        assert first["totals"]["kept"] == 4
        # the 404 and the robots.txt opt-out will not change; a 429 is counted apart from a 404
        assert first["retryable"] == {"rows": 5, "reasons": {
            "download:connect": 1, "download:http_4xx=429": 1, "download:http_5xx": 2, "download:timeout": 1}}
        assert f"`curate retry {out}` fetches only those again" in format_funnel(first, str(out))
        counts = dict(web.requests)
        assert counts["/busy-0.jpg"] == counts["/slow.jpg"] == 2 and counts["/limited.jpg"] == 1

        # the hosts come back
        for path in ("/busy-0.jpg", "/busy-1.jpg", "/slow.jpg", "/limited.jpg"):
            web.routes[path] = image(jpeg(colour=(0, 200, 0)))
        with HostileWeb({"/back.jpg": image(jpeg(colour=(0, 0, 200)))}, port=down_port) as back:
            assert curate(["retry", str(out), "--dry-run"]) == 0
            assert "5 samples failed transiently" in capsys.readouterr().out
            assert (out / "manifest.json").exists()
            # interrupted after the phase-1 blocks were rewritten: running it again resumes
            import clipcurate.pipelines.download.retry

            def interrupted(*args, **kwargs):
                raise KeyboardInterrupt

            monkeypatch.setattr(clipcurate.pipelines.download.retry, "run_pipeline", interrupted)
            with pytest.raises(KeyboardInterrupt):
                curate(["retry", str(out), "--inline", "--no-progress"])
            assert not (out / "manifest.json").exists() and (out / "_work" / "retry.json").exists()
            monkeypatch.undo()
            assert curate(["retry", str(out), "--inline", "--no-progress"]) == 0
            assert back.requests["/back.jpg"] == 1
        printed = capsys.readouterr().out
        after = dict(web.requests)

    assert "resuming an interrupted retry" in printed
    assert "retry: re-fetched 5 rows\n  downloaded OK 5: 5 kept, 0 removed by later stages\n  failed again 0" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"input": len(urls), "kept": 9, "rejected": 2}
    after_kept, after_rejects = _rows(out / "shards"), _rows(out / "rejects")
    assert set(after_rejects) == {web.url("/gone.jpg"), web.url("/private/x.jpg")}
    assert all(after_rejects[u]["reject"] == before_rejects[u]["reject"] for u in after_rejects)
    for url, row in before_kept.items():  # untouched rows: same uid, same bytes
        assert after_kept[url]["uid"] == row["uid"] and after_kept[url]["image"] == row["image"]
    # one new request per retried URL, none for anything else
    for path in ("/busy-0.jpg", "/busy-1.jpg", "/slow.jpg", "/limited.jpg"):
        assert after[path] == counts[path] + 1, path
    for path in ("/ok-0.jpg", "/ok-1.jpg", "/ok-2.jpg", "/ok-3.jpg", "/gone.jpg"):
        assert after[path] == counts[path] == 1, path
    assert after.get("/private/x.jpg", 0) == 0
    assert not (out / "_work" / "retry.json").exists()


def test_retry_needs_a_finished_run(tmp_path, capsys):
    assert curate(["retry", str(tmp_path / "nowhere")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_retry_counts_downloads_apart_from_later_removals(tmp_path, capsys):
    """A row that downloads on retry but a later filter removes is recovered, not failed:
    the report splits the download's answer from the stages after it."""
    routes = {
        "/robots.txt": image(ROBOTS, "text/plain"),
        "/ok.jpg": image(jpeg()),
        "/flaky-kept.jpg": status(503), "/flaky-short.jpg": status(503), "/down.jpg": status(503),
        "/limited.jpg": status(429, {"Retry-After": "3600"}), "/gone.jpg": status(404),
    }
    captions = {"/flaky-short.jpg": "two words"}  # basic_filter wants at least 3
    with HostileWeb(routes) as web:
        paths = [p for p in routes if p != "/robots.txt"]
        pool = tmp_path / "pool.parquet"
        pq.write_table(pa.table({"url": [web.url(p) for p in paths],
                                 "caption": [captions.get(p, "a long enough caption") for p in paths]}), pool)
        recipe, stages = parse_recipe({"stages": [
            {"download": {"image_size": 32, "retries": 0, "max_retry_after": 5,
                          "private_allowlist": [web.endpoint]}},
            {"basic_filter": {"min_image_side": 1}}]})
        out = tmp_path / "out"
        first = run_pipeline(recipe, stages, str(pool), str(out), RunOptions(inline=True, progress=False))
        assert retry_hint(first, str(out)) == (
            f"retry: 4 downloads failed for a reason that may pass (http_4xx=429 1, http_5xx 3); "
            f"`curate retry {out}` fetches only those again")
        for path in ("/flaky-kept.jpg", "/flaky-short.jpg", "/limited.jpg"):
            web.routes[path] = image(jpeg(colour=(0, 200, 0)))
        assert curate(["retry", str(out), "--inline", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert ("retry: re-fetched 4 rows\n"
            "  downloaded OK 3: 2 kept, 1 removed by later stages (basic_filter:too_few_words=1)\n"
            "  failed again 1 (download:http_5xx=1)") in printed
    assert f"retry: 1 download failed for a reason that may pass (http_5xx 1); `curate retry {out}`" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"input": 6, "kept": 3, "rejected": 3}
    assert manifest["retryable"] == {"rows": 1, "reasons": {"download:http_5xx": 1}}


def test_no_retry_hint_without_transient_failures():
    manifest = {"retryable": {"rows": 0, "reasons": {}}}
    assert retry_hint(manifest) is None
    assert retry_hint({}) is None  # a manifest written before the count existed
