"""Timestamps: one fixed-width format, so that comparing them as text compares times."""

from __future__ import annotations

import re
import time

from maskcore.clock import file_stamp, seconds_of, stamp_at, utc_now


def test_stamps_are_utc_with_a_z_and_sort_as_text():
    a = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now("seconds"))
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", file_stamp())
    time.sleep(0.002)
    b = utc_now()
    assert b > a  # the ledger keeps a source's newest row by this comparison


def test_a_stamp_reads_back_as_the_time_it_was_written():
    now = time.time()
    assert abs(seconds_of(utc_now()) - now) < 1
    assert seconds_of(stamp_at(86400.0)) == 86400.0 and stamp_at(86400.0) == "1970-01-02T00:00:00Z"
    assert seconds_of("2026-11-24T00:00:00.000Z") == seconds_of("2026-11-24T00:00:00Z")
    for not_a_stamp in ("", "yesterday", "2026-11-24T00:00:00"):  # no zone: no time
        assert seconds_of(not_a_stamp) is None
