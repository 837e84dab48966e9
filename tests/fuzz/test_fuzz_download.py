"""The download stage against a raw-socket web that answers with fuzzed bytes: every row
comes back (same uids), kept with an image that decodes or rejected with a ``download:*``
reason, and no batch outlives its deadline."""

from __future__ import annotations

from hypothesis import given

from targets import check_download, download_cases, fuzz_settings


@fuzz_settings(4)  # ~2.5 s a case (timeouts); bench/fuzz.py runs thousands
@given(download_cases())
def test_fuzzed_responses_give_images_or_download_reasons(case):
    check_download(case)
