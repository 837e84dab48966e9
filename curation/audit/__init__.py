"""Audit a run output: statistics from parquet columns, plots, and a self-contained HTML report.

``curate audit OUT`` writes ``OUT/report/index.html`` and ``OUT/report/stats.json``;
``curate stats OUT`` prints the key numbers. Modules: ``stats`` (polars scans),
``plots`` (matplotlib PNGs), ``thumbnails`` (the sampled rows, the only image reads),
``report`` (HTML), ``synthetic`` (run outputs for tests and benchmarks).

Imports are lazy so ``curate stats`` does not load matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "write_report": "clipcurate.curation.audit.report",
    "compute_stats": "clipcurate.curation.audit.stats",
    "key_numbers": "clipcurate.curation.audit.stats",
    "compare_runs": "clipcurate.curation.audit.stats",
    "open_run": "clipcurate.curation.audit.stats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipcurate.curation.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
