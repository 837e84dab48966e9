"""`curate sampleweb serve/stop` on a demo folder, and what `curate demo` leaves for it:
the same URLs and bytes come back, a taken port or a stale pool is a one-line error, a
folder that is not a demo output is never deleted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from clipcurate.curation.demo import _clear_output, write_demo_file, write_demo_recipes
from clipcurate.curation.sampleweb import SampleWeb, WebSpec, generate_samples
from clipcurate.curation.sampleweb_cli import _alive
from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.recipe import load_recipe

CURATE = [sys.executable, "-m", "clipcurate.pipelines.cli"]


def _demo_folder(folder: Path, samples: int = 20, seed: int = 0) -> WebSpec:
    """A demo output as far as the sample web is concerned: demo.json and the pool,
    on a port that was free a moment ago."""
    (folder / "data").mkdir(parents=True)
    with SampleWeb(n=samples, seed=seed) as web:
        web.write_pool(str(folder / "data" / "pool.parquet"))
        spec = WebSpec(samples=samples, seed=0, port=web.port)
    write_demo_file(folder, spec)
    return spec


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_serve_gives_the_pool_its_urls_and_bytes_back_until_ctrl_c(tmp_path):
    _demo_folder(tmp_path / "demo")
    proc = subprocess.Popen([*CURATE, "sampleweb", "serve", "--demo", str(tmp_path / "demo"), "--for", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "serving the sample web of" in proc.stdout.readline()
        pool = pq.read_table(tmp_path / "demo" / "data" / "pool.parquet").to_pylist()
        for row, sample in zip(pool, generate_samples(20, 0)):
            status, body = _fetch(row["url"])
            assert (status, body) == ((200, sample.body) if sample.body is not None else (404, b""))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        proc.kill()
    assert not (tmp_path / "demo" / "sampleweb.pid").exists()


def test_background_serve_returns_once_it_answers_and_stop_ends_it(tmp_path):
    spec = _demo_folder(tmp_path / "demo")
    demo = str(tmp_path / "demo")
    started = subprocess.run([*CURATE, "sampleweb", "serve", "--demo", demo, "--background", "--for", "120"],
                             capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{spec.port}" in started.stdout
        assert _fetch(f"http://127.0.0.1:{spec.port}/img/000000.jpg")[0] in (200, 404)
        again = subprocess.run([*CURATE, "sampleweb", "serve", "--demo", demo, "--background"],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already served" in again.stdout
    finally:
        stopped = subprocess.run([*CURATE, "sampleweb", "stop", "--demo", demo], capture_output=True, text=True,
                                 timeout=60)
    assert "stopped the sample web" in stopped.stdout
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: past TIME_WAIT
        probe.bind(("127.0.0.1", spec.port))  # nobody listens there any more
    assert "no sample web is served" in subprocess.run([*CURATE, "sampleweb", "stop", "--demo", demo],
                                                       capture_output=True, text=True, timeout=60).stdout


def test_a_taken_port_or_another_pool_is_a_one_line_error(tmp_path, capsys):
    spec = _demo_folder(tmp_path / "demo")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", spec.port))
        holder.listen()
        assert curate(["sampleweb", "serve", "--demo", str(tmp_path / "demo"), "--for", "1"]) == 2
    assert f"port {spec.port} of 127.0.0.1" in capsys.readouterr().err

    _demo_folder(tmp_path / "other", seed=5)  # demo.json says seed 0: the pool is not the web's
    (tmp_path / "other" / "demo.json").write_text((tmp_path / "demo" / "demo.json").read_text())
    assert curate(["sampleweb", "serve", "--demo", str(tmp_path / "other"), "--for", "1"]) == 2
    assert "lists other URLs or captions" in capsys.readouterr().err

    assert curate(["sampleweb", "serve", "--demo", str(tmp_path / "nothing")]) == 2
    assert "not a `curate demo` output" in capsys.readouterr().err


def test_demo_refuses_an_output_that_is_not_a_demo_and_replaces_one_that_is(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert curate(["demo", "--output", str(home)]) == 2
    assert "not a demo output" in capsys.readouterr().err and (home / "thesis.tex").exists()

    _demo_folder(tmp_path / "old")
    started = subprocess.run([*CURATE, "sampleweb", "serve", "--demo", str(tmp_path / "old"), "--background",
                              "--for", "120"], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("(pid ")[1].split(",")[0])
    _clear_output(tmp_path / "old", force=False)
    assert not (tmp_path / "old").exists()
    assert not _alive(pid)  # the web it served was stopped first

def test_demo_recipes_load_and_allow_only_the_loopback_download(tmp_path):
    (tmp_path / "metadata.json").write_text('["circle", "square"]')
    made = {"CLIPCURATE_FILTER_MODEL": "clip-tiny", "CLIPCURATE_METADATA": str(tmp_path / "metadata.json")}
    written = write_demo_recipes(tmp_path / "recipes", made)
    assert {p.name for p in written} >= {"datacomp-basic.yaml", "demo.yaml", "recommended.yaml", "dedup.yaml"}
    assert "laion-heads.yaml" not in {p.name for p in written}  # needs heads the demo does not make
    for path in written:
        assert "${" not in "".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
        _, stages = load_recipe(path)
        assert stages[0].name == "download" and stages[0].config.allow_private_networks, path.name
