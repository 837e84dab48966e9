"""``curate sampleweb``: serve a demo's sample web again.

The pool of ``curate demo`` lists URLs on the demo's loopback web, which stops when the
demo ends; without it every row of a later ``curate run`` fails as ``connect``. The web
is a function of ``OUT/demo.json`` (samples, seed, port), so it comes back with the same
URLs and bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from clipcurate.pipelines.errors import UserError

HELP = (
    "Serve the sample web of a `curate demo` output again, with the URLs and bytes of its pool (the demo's own "
    "web stops when the demo ends), so the README's commands run on the demo's data: in the foreground until "
    "Ctrl-C, or with --background for scripts until 'curate sampleweb stop'. "
    "Example: curate sampleweb serve --demo demo-out --background"
)
PID_FILE = "sampleweb.pid"  # in the demo folder while a web is served from it
LOG_FILE = "sampleweb.log"  # a background web's output
START_TIMEOUT_S = 60.0


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = commands.add_parser(
        "serve", help="serve a demo's sample web again (same port, URLs and bytes)",
        description="Serve the sample web that OUT/data/pool.parquet was made from, on its port of 127.0.0.1. "
                    "Prints its address; stops on Ctrl-C, SIGTERM, 'curate sampleweb stop' or --for.")
    serve.add_argument("--demo", default="demo-out", metavar="OUT", help="the demo output (default: demo-out)")
    serve.add_argument("--background", action="store_true",
                       help=f"start it as a background process and return once it answers (its pid in "
                            f"OUT/{PID_FILE}, its output in OUT/{LOG_FILE})")
    serve.add_argument("--for", dest="seconds", type=float, default=None, metavar="SECONDS",
                       help="stop after SECONDS (default: run until stopped)")
    stop = commands.add_parser("stop", help="stop the sample web served from a demo output",
                               description="Stop the web 'curate sampleweb serve' serves from OUT (if any).")
    stop.add_argument("--demo", default="demo-out", metavar="OUT", help="the demo output (default: demo-out)")


def run(args: argparse.Namespace) -> int:
    folder = Path(args.demo)
    if args.action == "stop":
        pid = stop_serving(folder)
        print(f"stopped the sample web of {folder} (pid {pid})" if pid else f"no sample web is served from {folder}")
        return 0
    if args.background:
        return _start_background(folder, args.seconds)
    return _serve(folder, args.seconds)


def stop_serving(folder: Path) -> int | None:
    """Stop the web served from ``folder``; its pid, or None when none was served."""
    pid = _serving_pid(folder)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / PID_FILE).unlink(missing_ok=True)
    return pid


def _serve(folder: Path, seconds: float | None) -> int:
    from clipcurate.curation.demo import read_demo

    spec = read_demo(folder)
    running = _serving_pid(folder)
    if running:
        raise UserError(f"{folder}'s sample web is already served (pid {running}); "
                        f"stop it with: curate sampleweb stop --demo {folder}")
    try:
        web = spec.build()
    except OSError as err:
        raise UserError(f"port {spec.port} of 127.0.0.1, where {folder}'s pool points, is in use ({err.strerror}): "
                        f"stop what holds it, or make a new pool with curate demo --output {folder}") from None
    with web:
        _check_pool(web, folder)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        _write_pid(folder, web.base_url)
        print(f"serving the sample web of {folder} on {web.base_url} ({spec.samples} pairs, the URLs of "
              f"{folder / 'data' / 'pool.parquet'}); stop: Ctrl-C or curate sampleweb stop --demo {folder}",
              flush=True)
        try:
            done.wait(seconds)
        except KeyboardInterrupt:
            pass
        finally:
            if _pid_in_file(folder) == os.getpid():
                (folder / PID_FILE).unlink(missing_ok=True)
    print(f"stopped the sample web of {folder}", flush=True)
    return 0


def _start_background(folder: Path, seconds: float | None) -> int:
    """Start ``serve`` as its own session (it outlives this command and the terminal)
    and return once its pid file says it answers."""
    from clipcurate.curation.demo import read_demo

    read_demo(folder)
    running = _serving_pid(folder)
    if running:
        print(f"the sample web of {folder} is already served (pid {running}): {_url_in_file(folder)}")
        return 0
    command = [sys.executable, "-m", "clipcurate.pipelines.cli", "sampleweb", "serve", "--demo", str(folder)]
    command += ["--for", str(seconds)] if seconds is not None else []
    with open(folder / LOG_FILE, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _pid_in_file(folder) != child.pid:
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            lines = (folder / LOG_FILE).read_text(errors="replace").strip().splitlines() or ["no output"]
            raise UserError(f"the sample web of {folder} did not start: {lines[-1]}")
        time.sleep(0.05)
    print(f"serving the sample web of {folder} on {_url_in_file(folder)} in the background (pid {child.pid}, "
          f"log {folder / LOG_FILE}); stop: curate sampleweb stop --demo {folder}")
    return 0


def _check_pool(web, folder: Path) -> None:
    """Refuse to serve a web whose URLs or captions differ from the demo's pool (a pool
    written by another version of the generator): every row would fail in a confusing way."""
    import pyarrow.parquet as pq

    path = folder / "data" / "pool.parquet"
    if path.is_file() and not pq.read_table(path, columns=["url", "caption"]).equals(
            web.pool().select(["url", "caption"])):
        raise UserError(f"{path} lists other URLs or captions than this version's sample web serves: "
                        f"make it again with curate demo --output {folder}")


def _write_pid(folder: Path, url: str) -> None:
    tmp = folder / f".{PID_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url}) + "\n", encoding="utf-8")
    os.replace(tmp, folder / PID_FILE)


def _read_pid_file(folder: Path) -> dict:
    try:
        info = json.loads((folder / PID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_in_file(folder: Path) -> int | None:
    pid = _read_pid_file(folder).get("pid")
    return pid if isinstance(pid, int) else None


def _url_in_file(folder: Path) -> str:
    return str(_read_pid_file(folder).get("url", "?"))


def _serving_pid(folder: Path) -> int | None:
    """The pid of the web served from ``folder``; a pid file left by a killed one is removed."""
    pid = _pid_in_file(folder)
    if pid is not None and _alive(pid):
        return pid
    (folder / PID_FILE).unlink(missing_ok=True)
    return None


def _alive(pid: int) -> bool:
    """A running ``curate sampleweb`` process (on Linux its command line is checked, so a
    reused pid or a zombie is not mistaken for the server)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.joinpath("self").exists():
        return True
    try:
        return b"sampleweb" in cmdline.read_bytes()
    except OSError:
        return False
