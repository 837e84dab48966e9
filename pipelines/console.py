"""Ray's own output kept off the user's terminal, in a log file of the run.

Ray writes from three places: its Python loggers (start-up, execution plans, progress),
warnings raised inside it, and its C++ core; all of them end on file descriptor 2.
``ray_output_to(path)`` points descriptor 2 at ``path`` for the duration of a run and
keeps a handle on the terminal, ``terminal()``, for what we show there (the progress
view); afterwards descriptor 2 is put back, so a caller in the same process (a test, a
notebook) is left as it was. Errors reach the terminal: the CLI prints them after the
run has given descriptor 2 back.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

_terminal: io.TextIOWrapper | None = None


def terminal():
    """Where our own live output goes: the terminal while Ray's output is diverted."""
    return _terminal or sys.stderr


@contextlib.contextmanager
def ray_output_to(path: str | Path):
    global _terminal
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 2)
    _terminal = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding="utf-8",
                                 errors="backslashreplace", line_buffering=True, write_through=True)
    try:
        yield path
    finally:
        sys.stderr.flush()
        _terminal.close()
        _terminal = None
        os.dup2(saved, 2)
        os.close(saved)
