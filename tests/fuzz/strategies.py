"""Hypothesis strategies shared by the fuzz tests: structured-but-hostile protocol input."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded: the whole fuzz directory runs in a few seconds.
FUZZ = settings(
    max_examples=100, deadline=1000, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)

token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!*",
    min_size=0,
    max_size=12,
)
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            '"',
            "'",
            ";",
            ",",
            "=",
            "<",
            ">",
            "\\",
            "\x00",
            "\r\n",
            " ",
            "\t",
            "%",
            "\udcff",
            "é",
            "💥",
            "..",
            "/",
            "\\x",
            "\\0",
        ]
    ),
    token,
)


def _joined(parts):
    return "".join(parts)


header_value = st.lists(nasty_text, max_size=8).map(_joined)

# numbers that hurt parsers: huge, negative, non-decimal spellings
nasty_number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        [
            "",
            " 1",
            "1 ",
            "+1",
            "0x10",
            "1e3",
            "1.5",
            "-0",
            "00",
            "１",
            "NaN",
            "99999999999999999999999999",
            "18446744073709551616",
            "-1",
        ]
    ),
)
