"""The one exception type for bad user input.

Every layer raises `InputError` with a one-line message that names the bad value and says what
would be valid; the CLI turns it into one line on stderr and exit code 2. `hwmodels` imports
nothing of ours, so the type lives here and the other packages import it from here.
"""
from __future__ import annotations

import difflib


class InputError(ValueError):
    """Bad input from a user: a one-line message naming the value and what is valid."""


def unknown_name(kind: str, name: str, known: list[str]) -> InputError:
    """An InputError for an unknown preset, with close names suggested (difflib ratio)."""
    close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InputError(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(known))})")
