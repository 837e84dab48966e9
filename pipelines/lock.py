"""One run per output folder: a lock file naming its holder, taken over when stale.

Two runs on one output (a second terminal, a retried job) would both write phase-1
blocks and shards and wait on each other's Ray resources; the second now refuses at
once with the holder's host, pid and start time. A lock left by a crashed or killed
run is stale and is taken over, so resuming needs nothing by hand: on the same host
when its process is gone, on another host (a shared mount, object storage) when its
heartbeat, rewritten every ``HEARTBEAT_S`` seconds while the run lives, is older than
``STALE_S``.

On a local filesystem the file is created with ``O_EXCL`` (atomic). Object stores have
no exclusive create through pyarrow: there the lock is written, read back and kept only
if it is still ours, which closes all but a sub-second race.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.storage import Storage

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 20.0
STALE_S = 120.0
_HELD: dict[str, dict] = {}  # lock path -> {"token", "count", "stop"}: locks this process holds


class RunLock:
    """``with RunLock(out): ...``: hold ``out/_lock.json`` for the block. Re-entrant in
    one process (``curate retry`` holds it around the run it starts)."""

    def __init__(self, out: Storage, command: str = "run"):
        self.out, self.command = out, command
        self.path = out.path(LOCK_FILE)
        self.took_over: dict | None = None  # the stale holder, when this lock replaced one

    def __enter__(self) -> "RunLock":
        held = _HELD.get(self.path)
        if held is not None:
            held["count"] += 1
            return self
        self.out.makedirs(self.out.root)
        token = uuid.uuid4().hex
        record = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command, "token": token,
                  "started": _now(), "heartbeat": time.time()}
        if not self._create(record):
            holder = self._read()
            if holder is not None and not _stale(holder):
                raise UserError(f"{self.out.uri()}: in use by another {holder.get('command', 'run')} "
                                f"(host {holder.get('host')}, pid {holder.get('pid')}, started "
                                f"{holder.get('started')}); wait for it to finish, or stop it and rerun")
            self.took_over = holder
            self.out.write_bytes(json.dumps(record).encode(), self.path)  # replace the stale lock
            if (self._read() or {}).get("token") != token:
                raise UserError(f"{self.out.uri()}: another run took the stale lock first; rerun later")
        stop = threading.Event()
        _HELD[self.path] = {"token": token, "count": 1, "stop": stop}
        threading.Thread(target=self._beat, args=(record, stop), daemon=True, name="curate-lock").start()
        return self

    def __exit__(self, *exc) -> None:
        held = _HELD.get(self.path)
        if held is None:
            return
        held["count"] -= 1
        if held["count"]:
            return
        held["stop"].set()
        del _HELD[self.path]
        if (self._read() or {}).get("token") == held["token"]:
            self.out.fs.delete_file(self.path)

    def _create(self, record: dict) -> bool:
        data = json.dumps(record).encode()
        if self.out.local:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        if self.out.exists(self.path):
            return False
        self.out.write_bytes(data, self.path)
        return (self._read() or {}).get("token") == record["token"]

    def _read(self) -> dict | None:
        try:
            return json.loads(self.out.read_bytes(self.path))
        except (FileNotFoundError, OSError, ValueError):
            return None  # gone, or half-written by a crash: treated as stale

    def _beat(self, record: dict, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                if (self._read() or {}).get("token") != record["token"]:
                    return
                self.out.write_bytes(json.dumps(record | {"heartbeat": time.time()}).encode(), self.path)
            except OSError:
                continue  # a transient store error: the next beat tries again


def _stale(holder: dict) -> bool:
    """The holder is gone: same host and no such process, or an old heartbeat."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if holder["pid"] == os.getpid():
            return True  # this process, but not a lock it holds now: left by an earlier call
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_S


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
