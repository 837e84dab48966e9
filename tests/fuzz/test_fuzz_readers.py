"""Fuzzed input files through the readers: a one-line UserError, or partitions that hold
every input row once, each with a 32-hex uid and no reason or an ``input:*`` one."""

from __future__ import annotations

import tempfile

from hypothesis import given

from targets import check_reader, fuzz_settings, reader_cases


@fuzz_settings(40)
@given(reader_cases())
def test_fuzzed_inputs_give_rows_or_one_line_errors(case):
    with tempfile.TemporaryDirectory() as folder:
        check_reader(case, folder)
