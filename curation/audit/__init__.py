"""Audit a run output: statistics from parquet columns, plots, and a self-contained HTML report.

``curate audit OUT`` writes ``OUT/report/index.html`` and ``OUT/report/stats.json``;
``curate stats OUT`` prints the key numbers. Modules: ``stats`` (polars scans),
``plots`` (matplotlib PNGs), ``thumbnails`` (the sampled rows, the only image reads),
``report`` (HTML), ``synthetic`` (run outputs for tests and benchmarks).
"""

from curation.audit.report import write_report
from curation.audit.stats import compare_runs, compute_stats, key_numbers, open_run

__all__ = ["write_report", "compute_stats", "key_numbers", "compare_runs", "open_run"]
