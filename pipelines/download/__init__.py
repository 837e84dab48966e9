"""Stage 1, the download: URLs + captions -> image bytes (``stage.Download``, on
img2dataset's machinery), the HTTP client it fetches with (``fetch``) and ``curate retry``
(``retry``), which re-fetches only a finished run's transient failures."""

from clipcurate.pipelines.download.stage import Download

__all__ = ["Download"]
