"""The live view of a run: per stage, rows seen and kept so far, rows/s, elapsed, ETA.

Stages run in Ray workers, so every stage call reports its batch's counts to one small
named actor (fire and forget, no CPU asked) and the driver polls it twice a second;
inline runs count in this process. A terminal gets one tqdm bar per stage; a file or
a pipe gets one plain line per phase every ``LINE_EVERY_S`` seconds and when the phase
ends. Counts are for the view only: a retried task counts its rows twice.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa

from clipcurate.pipelines.stage import REJECT

BOARD = "clipcurate-progress"
POLL_S = 0.5
LINE_EVERY_S = 30.0
_LOOKUP_AGAIN_S = 10.0  # a worker without a board (a run with the view off) asks again this late


class Board:
    """Rows and kept rows per stage label, summed over every worker's reports."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}

    def add(self, label: str, rows: int, kept: int) -> None:
        counts = self.counts.setdefault(label, [0, 0])
        counts[0] += rows
        counts[1] += kept

    def reset(self) -> None:
        self.counts = {}

    def snapshot(self) -> dict[str, list[int]]:
        return {label: list(c) for label, c in self.counts.items()}


_local: Board | None = None  # the board of an inline run, in this process
_remote: dict = {"handle": None, "looked": 0.0}


def report(label: str, batch: pa.Table) -> None:
    """Count one stage call's output rows (all of them pass through) and its kept rows."""
    if _local is not None:
        _local.add(label, batch.num_rows, _kept(batch))
        return
    handle = _board_handle()
    if handle is not None:
        handle.add.remote(label, batch.num_rows, _kept(batch))


def _kept(batch: pa.Table) -> int:
    if REJECT not in batch.column_names:
        return batch.num_rows
    return batch.column(REJECT).null_count


def _board_handle():
    """This worker's handle on the driver's board, or None when the run has no view."""
    if _remote["handle"] is None and time.monotonic() - _remote["looked"] > _LOOKUP_AGAIN_S:
        _remote["looked"] = time.monotonic()
        import ray

        if ray.is_initialized():
            try:
                _remote["handle"] = ray.get_actor(BOARD)
            except ValueError:
                pass
    return _remote["handle"]


@dataclass
class _Phase:
    name: str
    labels: list[str]
    total: int
    started: float = field(default_factory=time.monotonic)
    notes: dict[str, str] = field(default_factory=dict)


_active: "RunProgress | None" = None  # the driver's view, for notes from the runner


def note(label: str, text: str) -> None:
    """A stage's state besides its counts, shown if a view is open."""
    if _active is not None:
        _active.note(label, text)


class RunProgress:
    """The driver's side: a board, a polling thread, and the display (bars or lines)."""

    def __init__(self, *, ray_board: bool, stream=None, bars: bool | None = None):
        global _local, _active
        _active = self
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        if ray_board:
            import ray

            self.board = ray.remote(num_cpus=0)(Board).options(name=BOARD, get_if_exists=True).remote()
            ray.get(self.board.reset.remote())
            self._snapshot = lambda: ray.get(self.board.snapshot.remote())
        else:
            _local = self.board = Board()
            self._snapshot = self.board.snapshot
        self.phase: _Phase | None = None
        self._bars: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = 0.0

    def start_phase(self, name: str, labels: list[str], total: int) -> None:
        """Show ``labels`` (the stages of one phase, in order) against ``total`` rows."""
        self.end_phase()
        self.phase = _Phase(name, labels, total)
        self._last_line = time.monotonic()
        if self.bars:
            from tqdm import tqdm

            width = max(len(label) for label in labels) if labels else 0
            self._bars = {label: tqdm(total=total, desc=f"{label:<{width}}", unit=" rows", file=self.stream,
                                      position=i, leave=True, dynamic_ncols=True, smoothing=0.1)
                          for i, label in enumerate(labels)}
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="clipcurate-progress")
        self._thread.start()

    def note(self, label: str, text: str) -> None:
        """A stage's state besides its counts (a global stage's fit on the driver)."""
        if self.phase is not None:
            self.phase.notes[label] = text
            if self.bars and label in self._bars:
                self._bars[label].set_postfix_str(text)
            elif not self.bars:
                print(f"{self.phase.name}: {label} {text}", file=self.stream, flush=True)

    def end_phase(self) -> None:
        if self.phase is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._show(self._counts(), final=True)
        for bar in self._bars.values():
            bar.close()
        self._bars, self.phase = {}, None

    def close(self) -> None:
        global _local, _active
        self.end_phase()
        if _local is self.board:
            _local = None
        if _active is self:
            _active = None

    def _counts(self) -> dict[str, list[int]]:
        try:
            return self._snapshot()
        except Exception:  # noqa: BLE001 - the view must never stop the run
            return {}

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._show(self._counts())

    def _show(self, counts: dict[str, list[int]], final: bool = False) -> None:
        phase = self.phase
        if self.bars:
            for label, bar in self._bars.items():
                rows, kept = counts.get(label, (0, 0))
                if rows > bar.n:
                    bar.update(rows - bar.n)
                if rows:
                    note = phase.notes.get(label, "")
                    bar.set_postfix_str(f"{kept:,} kept" + (f", {note}" if note else ""), refresh=False)
            return
        if final or time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._last_line = time.monotonic()
            print(phase_line(phase, counts, time.monotonic() - phase.started, final), file=self.stream, flush=True)


def phase_line(phase: _Phase, counts: dict[str, list[int]], elapsed: float, final: bool = False) -> str:
    """One plain line: rows through every stage of the phase so far, kept, rate, ETA."""
    through = min((counts.get(label, (0, 0))[0] for label in phase.labels), default=0)
    kept = counts.get(phase.labels[-1], (0, 0))[1] if phase.labels else 0
    rate = through / elapsed if elapsed > 0 else 0.0
    left = f"ETA {_clock((phase.total - through) / rate)}" if rate and through < phase.total else \
        ("done" if final else "ETA unknown")
    slowest = min(phase.labels, key=lambda label: counts.get(label, (0, 0))[0]) if phase.labels else ""
    return (f"{phase.name}: {through:,}/{phase.total:,} rows through {len(phase.labels)} stage(s), {kept:,} kept, "
            f"{rate:,.0f} rows/s, elapsed {_clock(elapsed)}, {left}"
            + (f" (slowest: {slowest})" if slowest and not final and through < phase.total else ""))


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
