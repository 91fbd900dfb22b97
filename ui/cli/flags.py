"""Flag converters: the `type=` of every command-line flag that is not free text.

Each factory takes the flag's name and returns a converter that turns the text into a checked value
or raises `argparse.ArgumentTypeError` with one line naming the flag, the value given and what would
be valid (the parser turns that into `clusterplan: error: ...` and exit code 2):

    p.add_argument("--nodes", type=flags.integer("--nodes"))            # 1, 2, ...
    p.add_argument("--seed", type=flags.integer("--seed", lo=0))        # 0, 1, ...
    p.add_argument("--slo-tpot", type=flags.slo("--slo-tpot"))          # 50ms -> 0.05 (seconds)
    p.add_argument("--size", type=flags.size("--size"))                 # 256MiB -> 268435456 (bytes)

Units are case-insensitive; a bare number is the base unit (seconds, bytes, tokens, USD), except
for latency targets (`slo`), which must carry their unit.
"""
from __future__ import annotations

import argparse
import math
import re

Error = argparse.ArgumentTypeError

_NUMBER_AND_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*")

# Units as they are written in messages; matched case-insensitively.
SIZE_UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
              "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}
DURATION_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "m": 60.0, "min": 60.0,
                  "h": 3600.0, "d": 86400.0, "w": 604800.0}
SI_UNITS = {"k": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}  # token counts, money


def _fail(flag: str, shown, what: str) -> Error:
    return Error(f"{flag}={shown} must be {what}")


# ---- plain numbers ------------------------------------------------------------------------------

def integer(flag: str, lo: int = 1, hi: int | None = None):
    """An integer in [lo, hi] (hi: no upper bound when None)."""
    what = (f"an integer {lo}..{hi}" if hi is not None else
            "a positive integer" if lo == 1 else f"an integer >= {lo}")

    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise _fail(flag, repr(text), what) from None
        if v < lo or (hi is not None and v > hi):
            raise _fail(flag, v, what)
        return v
    return conv


def integers(flag: str, lo: int = 1):
    """Comma-separated integers >= lo, e.g. "1,4,16" -> (1, 4, 16)."""
    what = f"comma-separated integers >= {lo}, e.g. 1,4,16"

    def conv(text: str) -> tuple:
        try:
            vals = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise _fail(flag, repr(text), what) from None
        if any(v < lo for v in vals):
            raise _fail(flag, repr(text), what)
        return vals
    return conv


def _real(flag: str, ok, what: str):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise _fail(flag, repr(text), what) from None
        if not (math.isfinite(v) and ok(v)):  # NaN fails every comparison
            raise _fail(flag, repr(text), what)
        return v
    return conv


def positive(flag: str, unit: str = ""):
    """A finite number > 0 (`unit` only names it in the message: "requests/s")."""
    return _real(flag, lambda v: v > 0, "a positive number" + (f" of {unit}" if unit else ""))


def non_negative(flag: str):
    """A finite number >= 0."""
    return _real(flag, lambda v: v >= 0, "a finite number >= 0")


def fraction(flag: str, zero: bool = False):
    """A number in (0, 1], or [0, 1) with zero=True (a relative gap)."""
    if zero:
        return _real(flag, lambda v: 0 <= v < 1, "a number in [0, 1)")
    return _real(flag, lambda v: 0 < v <= 1, "a number in (0, 1]")


def on_off(flag: str):
    """A switch: on/off (also true/false, yes/no, 1/0)."""
    def conv(text: str) -> bool:
        t = text.strip().lower()
        if t in ("on", "true", "yes", "1"):
            return True
        if t in ("off", "false", "no", "0"):
            return False
        raise _fail(flag, repr(text), "on or off")
    return conv


# ---- numbers with units -------------------------------------------------------------------------

def _with_unit(text: str, flag: str, units: dict, noun: str, example: str) -> float:
    """float(number) x unit, the unit one of `units` (any case) or none (x 1)."""
    m = _NUMBER_AND_UNIT.fullmatch(str(text))
    if not m:
        raise Error(f"{flag}={text!r} is not {noun} (e.g. {example})")
    scale = {u.lower(): v for u, v in units.items()}
    scale[""] = 1
    unit = m.group(2).lower()
    if unit not in scale:
        raise Error(f"{flag}={text!r}: unknown unit {m.group(2)!r}; valid units: {', '.join(units)}")
    return float(m.group(1)) * scale[unit]


def parse_size(text: str, flag: str = "--size") -> int:
    """Bytes from '256MiB', '1GB', '1.5 KiB' or '4096' (at least 1 byte)."""
    v = _with_unit(text, flag, SIZE_UNITS, "a size", "256MiB, 1GB, 4096 bytes")
    if not (math.isfinite(v) and v >= 1):
        raise _fail(flag, repr(text), "at least 1 byte")
    return int(round(v))


def parse_duration(text: str, flag: str = "--duration", zero: bool = True) -> float:
    """Seconds from '2s', '50ms', '1500us', '0.5' (seconds), '2min', '12h', '30d' or '1w'.
    zero=False refuses 0."""
    v = _with_unit(text, flag, DURATION_UNITS, "a duration", "2s, 50ms, 1500us, 12h, 30d")
    if not (math.isfinite(v) and (v >= 0 if zero else v > 0)):
        raise _fail(flag, repr(text), "a non-negative duration" if zero else "a positive duration")
    return v


def size(flag: str):
    """Bytes (int) from a size with a unit: 256MiB, 1GB, 4096."""
    return lambda text: parse_size(text, flag)


def duration(flag: str, zero: bool = True):
    """Seconds (float) from a duration with a unit: 2s, 50ms, 12h, 30d."""
    return lambda text: parse_duration(text, flag, zero)


def slo(flag: str):
    """Seconds (float) from a latency target that carries its unit: 50ms, 2s, 1500us. A bare
    number is refused: "--slo-tpot 50" read as seconds once meant a 50 ms intent held as 50 s."""
    def conv(text: str) -> float:
        m = _NUMBER_AND_UNIT.fullmatch(str(text))
        if m and not m.group(2):
            raise Error(f"{flag}={text!r} needs a unit: {m.group(1)}ms or {m.group(1)}s")
        return parse_duration(text, flag, zero=False)
    return conv


def _si(flag: str, noun: str, example: str, prefix: str = ""):
    def conv(text: str) -> float:
        t = str(text).strip()
        v = _with_unit(t[len(prefix):] if prefix and t.startswith(prefix) else t, flag, SI_UNITS, noun, example)
        if not (math.isfinite(v) and v > 0):
            raise _fail(flag, repr(text), "positive and finite")
        return v
    return conv


def count(flag: str):
    """A count with an SI suffix (tokens): 2e12, 300B, 15T (k, M, B or G, T)."""
    return _si(flag, "a count", "2e12, 300B or 15T")


def money(flag: str):
    """An amount in USD with an optional $ and SI suffix: 50000, $50k, 1.5M."""
    return _si(flag, "an amount in USD", "50000, $50k or 1.5M", prefix="$")


# ---- renamed flags ------------------------------------------------------------------------------

class DeprecatedAlias(argparse.Action):
    """An old spelling of a renamed flag, kept for one release: it stores into the new flag's
    `dest` and leaves a note (printed on stderr once the command succeeds, so that an error stays
    one line). Use: p.add_argument("--trace", dest="chrome_trace", action=DeprecatedAlias,
    new="--chrome-trace", help=argparse.SUPPRESS)."""

    def __init__(self, option_strings, dest, new: str, why: str = "", **kw):
        self.new, self.why = new, why
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        notes = getattr(namespace, "deprecation_notes", None) or []
        notes.append(f"{option_string} is deprecated and will be removed in the next release; use {self.new}"
                     + (f" ({self.why})" if self.why else ""))
        namespace.deprecation_notes = notes
