"""The serving settings read from the environment (the serverless handler's only options)."""

from __future__ import annotations

import pytest

from maskcore.errors import UsageError
from maskcore.settings import DEFAULTS, from_env


def test_defaults_when_nothing_is_set():
    assert from_env({}) == DEFAULTS


def test_values_are_parsed_like_the_cli_options():
    s = from_env({"MASKCORE_FACES": "off", "MASKCORE_BATCH_SIZE": "8",
                  "MASKCORE_THRESHOLD": "0.75", "MASKCORE_DEVICE": "cpu"})
    assert (s.faces, s.batch_size, s.threshold, s.device) == ("off", 8, 0.75, "cpu")


@pytest.mark.parametrize("var, value", [
    ("MASKCORE_BATCH_SIZE", "abc"), ("MASKCORE_BATCH_SIZE", "0"), ("MASKCORE_THRESHOLD", "nan"),
    ("MASKCORE_THRESHOLD", "inf"), ("MASKCORE_THRESHOLD", "1.5"), ("MASKCORE_FACES", "maybe"),
])
def test_unusable_values_name_their_variable(var, value):
    with pytest.raises(UsageError, match=var):
        from_env({var: value})
