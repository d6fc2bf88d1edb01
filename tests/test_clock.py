"""Timestamps: one fixed-width format, so that comparing them as text compares times."""

from __future__ import annotations

import re
import time

from maskcore.clock import file_stamp, utc_now


def test_stamps_are_utc_with_a_z_and_sort_as_text():
    a = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now("seconds"))
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", file_stamp())
    time.sleep(0.002)
    b = utc_now()
    assert b > a  # the ledger keeps a source's newest row by this comparison
