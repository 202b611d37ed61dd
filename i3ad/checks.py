"""Tests of values that come from outside (command line, app requests, checkpoint files): numbers that are really
numbers; and short excerpts of a bad value or of a library's error, for i3ad's own error messages."""

from __future__ import annotations

import math
import numbers

# Longest excerpt of a bad value an error message shows (a request may send anything, of any length).
SHOWN_LENGTH = 24


def is_number(value: object) -> bool:
    """A real number (numpy's too), but not a bool, a string or anything else a request may carry."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A real number that is neither infinite nor NaN."""
    return is_number(value) and math.isfinite(value)


def is_whole_number(value: object) -> bool:
    """A number without a fractional part (2 and 2.0, not 2.5, NaN or True)."""
    # Integers are whole already, and math.isfinite cannot even take one with 400 digits.
    return is_number(value) and (isinstance(value, numbers.Integral) or (math.isfinite(value) and value == int(value)))


def is_count(value: object) -> bool:
    """A Python int >= 1 (a size, a width, a number of items; stored in JSON as it is): not 2.0, not True."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to SHOWN_LENGTH characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_LENGTH else f"{text[: SHOWN_LENGTH - 3]}..."


# Longest excerpt of a library's error message that one of i3ad's messages shows.
SUMMARY_LENGTH = 300


def error_summary(error: BaseException) -> str:
    """The first line of an error's message (a library's may run to pages), with the line after it when it only
    announces that one (ends in a colon, as torch's "Error(s) in loading state_dict for ...:" does), cut to
    SUMMARY_LENGTH characters; or the error's type when it has no message."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    summary = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return summary if len(summary) <= SUMMARY_LENGTH else f"{summary[: SUMMARY_LENGTH - 3]}..."
