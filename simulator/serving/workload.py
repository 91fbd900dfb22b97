"""What arrives at a serving cluster: `Request`s, from an arrival process and length distributions
or from a trace file. Together they form a `ServingWorkload`.

Length distributions (prompt and output tokens), one string each:
    "1024"                  every request 1024 tokens
    "uniform:128:2048"      integers uniform in [128, 2048]
    "normal:1000:200"       mean 1000, standard deviation 200 (rounded, clipped to >= 1)
    "lognormal:1000:500"    log-normal with mean 1000 and standard deviation 500 in token space
    "exp:300"               exponential with mean 300 (rounded up, >= 1)
Every sampled length is clipped to [1, MAX_LEN].

Arrivals:
    open loop   Poisson at `rate` req/s; `gamma:CV` makes inter-arrival gaps gamma-distributed with
                coefficient of variation CV (CV = 1 is Poisson; > 1 is burstier); the rate may vary
                in time: "10:60,40:30" means 10 req/s for 60 s, then 40 req/s for 30 s (the last
                segment holds afterwards).
    closed loop `concurrency` clients, each sending its next request when its previous one ends
                (plus `think_time_s`); all start at t = 0 unless `ramp_up_s` spreads their first
                requests uniformly at random over [0, ramp_up_s).
Shared prefixes: `shared_prefix=(groups, tokens)` gives each request, uniformly at random, one
of `groups` prefixes of `tokens` tokens (a system prompt); prefix caching can then reuse its KV.

Trace files (format picked from the header / extension):
    Azure LLM inference (AzurePublicDataset 2023/2024): CSV `TIMESTAMP,ContextTokens,GeneratedTokens`,
        TIMESTAMP a date-time ("2023-11-16 18:15:46.6805900") or seconds;
    BurstGPT (Wang et al. 2024): CSV `Timestamp,Model,Request tokens,Response tokens,Total tokens,
        Log Type`, Timestamp in seconds; failed requests (0 response tokens) are dropped;
    Mooncake (Qin et al. 2024, FAST'25 traces): JSONL with `timestamp` (ms), `input_length`,
        `output_length` and optional `hash_ids` (one id per 512-token block; equal ids = equal
        prefixes, used by prefix caching).
A bad trace (missing column, non-number, negative length, timestamps going backwards) raises an
InputError naming the file and line.

Every stochastic choice draws from one `numpy.random.Generator(seed)`, so a seed fixes the run.
"""
from __future__ import annotations

import csv
import json
import math
import operator
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from hwmodels.errors import InputError

MAX_LEN = 1 << 20
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake traces hash prompts in 512-token blocks (kvcache-ai/Mooncake traces README)


class Request:
    """One inference request and what happened to it. Times in seconds of simulated time."""

    __slots__ = ("id", "arrival_s", "prompt_len", "output_len", "prefix_keys", "prefix_key_tokens",
                 "client", "replica", "first_token_s", "finish_s", "last_token_s", "generated",
                 "computed", "target", "cached", "blocks", "preemptions", "dec_k0", "dec_l0",
                 "transfer_s", "seq", "held_keys", "shared_blocks", "prefill_only", "clock_s")

    def __init__(self, id: int, arrival_s: float, prompt_len: int, output_len: int,
                 prefix_keys: tuple = (), prefix_key_tokens: int = 0, client: int = -1):
        self.id = id
        self.arrival_s = arrival_s
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.prefix_keys = prefix_keys  # cache keys of the prompt's leading segments
        self.prefix_key_tokens = prefix_key_tokens  # tokens per key
        self.client = client  # closed-loop client index, -1 for open loop
        self.replica = -1
        self.first_token_s = math.nan
        self.finish_s = math.nan
        self.last_token_s = math.nan
        self.generated = 0  # output tokens produced so far
        self.computed = 0  # tokens whose KV is in the cache (prefill progress)
        self.target = 0  # tokens to compute before the next token can be sampled
        self.cached = 0  # prompt tokens served from the prefix cache
        self.blocks = 0  # KV blocks this request owns (shared prefix blocks excluded)
        self.preemptions = 0
        self.dec_k0 = 0  # decoding: iteration index at which decoding (re)started
        self.dec_l0 = 0  # decoding: tokens in KV at that iteration
        self.transfer_s = 0.0  # disaggregated serving: KV transfer time
        self.seq = 0  # bumped when the request leaves the decode set (stale finish-heap entries)
        self.held_keys: tuple = ()  # prefix-cache entries this request references
        self.shared_blocks = 0  # KV blocks it reads from the prefix cache
        self.prefill_only = False  # disaggregated serving: on the prefill pool
        # where the client starts its latency clock: at the server arrival (aiperf: HTTP send)
        # or earlier (benchmark_serving: when the concurrency slot is acquired), see clients.py
        self.clock_s = arrival_s

    @property
    def ttft_s(self) -> float:
        """First token − the client's clock start (arrival at the server unless the client
        starts its clock earlier)."""
        return self.first_token_s - self.clock_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.clock_s

    @property
    def tpot_s(self) -> float:
        """vLLM benchmark_serving: (E2E − TTFT) / (output tokens − 1); NaN for one-token outputs."""
        if self.output_len <= 1:
            return math.nan
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)

    def __repr__(self):
        return (f"Request({self.id}, t={self.arrival_s:.3f}, prompt={self.prompt_len}, "
                f"out={self.output_len})")


# ---- length distributions ------------------------------------------------------------------

@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution parsed from the syntax in the module docstring."""
    kind: str
    a: float = 0.0
    b: float = 0.0
    text: str = ""
    values: tuple = ()  # kind "empirical": lengths drawn uniformly from these (a request-size class)

    @classmethod
    def empirical(cls, values, text: str) -> "LengthDist":
        """Lengths drawn uniformly from `values` (what `plan serve` uses for one size class of a
        workload: the sampled lengths that fall in the class)."""
        vals = tuple(int(v) for v in values)
        if not vals or min(vals) < 1:
            raise InputError(f"length class {text!r}: needs lengths >= 1")
        return cls("empirical", min(vals), max(vals), text, vals)

    @classmethod
    def parse(cls, text: str, what: str = "length") -> "LengthDist":
        t = str(text).strip().lower()
        parts = t.split(":")
        try:
            nums = [float(p) for p in parts[1:]] if len(parts) > 1 else []
            if len(parts) == 1:
                v = float(parts[0])
                if not v.is_integer() or v < 1:
                    raise InputError(f"{what} {text!r}: a fixed length must be an integer >= 1")
                return cls("const", v, v, t)
        except ValueError:
            raise InputError(f"{what} {text!r}: not a number or distribution; valid: 1024, "
                             f"uniform:LO:HI, normal:MEAN:STD, lognormal:MEAN:STD, exp:MEAN") from None
        kind = parts[0]
        arity = {"uniform": 2, "normal": 2, "lognormal": 2, "exp": 1}
        if kind not in arity:
            raise InputError(f"{what} {text!r}: unknown distribution {kind!r}; valid: uniform:LO:HI, "
                             f"normal:MEAN:STD, lognormal:MEAN:STD, exp:MEAN, or a number")
        if len(nums) != arity[kind]:
            raise InputError(f"{what} {text!r}: {kind} takes {arity[kind]} number(s)")
        if not all(math.isfinite(v) and abs(v) <= MAX_LEN for v in nums):
            # lengths are clipped to MAX_LEN anyway; beyond it a parameter is a typo, and an
            # infinite or astronomically large one overflows the sampler
            raise InputError(f"{what} {text!r}: every parameter must be a finite number <= {MAX_LEN:,}")
        if kind == "uniform" and not (1 <= nums[0] <= nums[1]):
            raise InputError(f"{what} {text!r}: uniform needs 1 <= LO <= HI")
        if kind in ("normal", "lognormal") and (nums[0] < 1 or nums[1] < 0):
            raise InputError(f"{what} {text!r}: needs MEAN >= 1 and STD >= 0")
        if kind == "exp" and nums[0] <= 0:
            raise InputError(f"{what} {text!r}: exp needs MEAN > 0")
        return cls(kind, nums[0], nums[1] if len(nums) > 1 else 0.0, t)

    @property
    def mean(self) -> float:
        if self.kind == "empirical":
            return sum(self.values) / len(self.values)
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "const":
            x = np.full(n, self.a)
        elif self.kind == "empirical":
            x = np.asarray(self.values, dtype=float)[rng.integers(0, len(self.values), size=n)]
        elif self.kind == "uniform":
            x = rng.integers(int(self.a), int(self.b) + 1, size=n).astype(float)
        elif self.kind == "normal":
            x = rng.normal(self.a, self.b, size=n)
        elif self.kind == "lognormal":
            # Moment matching: σ² = ln(1 + s²/m²), μ = ln m − σ²/2 (log-normal mean and variance)
            s2 = math.log1p((self.b / self.a) ** 2)
            x = rng.lognormal(math.log(self.a) - s2 / 2, math.sqrt(s2), size=n)
        else:  # exp
            x = np.ceil(rng.exponential(self.a, size=n))
        return np.clip(np.rint(x), 1, MAX_LEN).astype(np.int64)


# ---- arrival processes ---------------------------------------------------------------------

@dataclass(frozen=True)
class RateSchedule:
    """Piecewise-constant request rate: [(rate req/s, duration s), ...]; the last rate holds."""
    segments: tuple

    @classmethod
    def parse(cls, text) -> "RateSchedule":
        if isinstance(text, (int, float)):
            text = str(text)
        segs = []
        for i, part in enumerate(str(text).split(",")):
            bits = part.strip().split(":")
            try:
                rate = float(bits[0])
                dur = float(bits[1]) if len(bits) > 1 else math.inf
            except (ValueError, IndexError):
                raise InputError(f"rate {text!r}: expected a number or RATE:SECONDS,RATE:SECONDS,...") from None
            if not math.isfinite(rate) or rate <= 0 or len(bits) > 2 or dur <= 0:
                raise InputError(f"rate {text!r}: segment {i + 1} needs a rate > 0 and a duration > 0")
            segs.append((rate, dur))
        return cls(tuple(segs))

    @property
    def is_constant(self) -> bool:
        return len(self.segments) == 1

    def rate_at(self, t: float) -> float:
        end = 0.0
        for rate, dur in self.segments:
            end += dur
            if t < end:
                return rate
        return self.segments[-1][0]

    def warp(self, u: np.ndarray) -> np.ndarray:
        """Map arrival times of a unit-rate process to this schedule (time change by the
        cumulative rate Λ(t) = ∫ rate: a renewal process at rate 1 in Λ-time)."""
        out = np.empty_like(u)
        bounds_t, bounds_l = [0.0], [0.0]
        for rate, dur in self.segments[:-1]:
            bounds_t.append(bounds_t[-1] + dur)
            bounds_l.append(bounds_l[-1] + rate * dur)
        rates = [r for r, _ in self.segments]
        idx = np.searchsorted(np.array(bounds_l), u, side="right") - 1
        for i in range(len(rates)):
            m = idx == i
            out[m] = bounds_t[i] + (u[m] - bounds_l[i]) / rates[i]
        return out


def arrival_times(n: int, rate: RateSchedule, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """`n` open-loop arrival times (s). cv = 1: Poisson; else gamma gaps with shape 1/cv² and mean
    1 (then warped to the rate schedule), the burstiness model of BurstGPT (Wang et al. 2024 §4)."""
    if cv <= 0 or not math.isfinite(cv):
        raise InputError(f"arrival CV={cv!r} must be > 0")
    if cv == 1.0:
        gaps = rng.exponential(1.0, size=n)
    else:
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / shape, size=n)
    u = np.cumsum(gaps) - gaps[0]  # the first request arrives at t = 0
    return rate.warp(u)


def _length(value, what: str, least: int = 1) -> int:
    """A trace row's token count as a Python int (NumPy integers and whole floats accepted)."""
    try:
        n = operator.index(value)
    except TypeError:
        n = int(value) if isinstance(value, (float, np.floating)) and float(value).is_integer() else None
    if n is None or n < least:
        raise InputError(f"trace row: {what} {value!r} must be an integer >= {least}")
    return int(n)


# ---- the workload --------------------------------------------------------------------------

@dataclass
class ServingWorkload:
    """Arrivals (open-loop rate, closed-loop concurrency, or a trace), lengths and SLOs."""
    num_requests: int = 1000
    prompt_len: LengthDist = field(default_factory=lambda: LengthDist.parse("1024"))
    output_len: LengthDist = field(default_factory=lambda: LengthDist.parse("128"))
    rate: RateSchedule | None = None  # open loop
    arrival_cv: float = 1.0
    concurrency: int = 0  # closed loop when > 0
    think_time_s: float = 0.0
    ramp_up_s: float = 0.0  # closed loop: first requests spread over this window
    warmup_requests: int = 0  # requests excluded from the statistics (the first ones issued)
    shared_prefix: tuple = (0, 0)  # (groups, tokens)
    trace: list | None = None  # [(arrival_s, prompt, output, prefix_keys, key_tokens)]
    trace_name: str = ""
    slo_ttft_s: float = math.inf
    slo_tpot_s: float = math.inf
    seed: int = 0
    # benchmark client (simulator/serving/clients.py): its name and settings, for the report
    client: str = ""
    client_options: dict = field(default_factory=dict)
    # closed loop: the first wave's requests leave the client one after another, `send_gap_s`
    # apart (a serial sender); "slot": the TTFT clock starts when the slot is acquired (t = 0 for
    # the first wave), "send": when the request is sent
    send_gap_s: float = 0.0
    ttft_clock: str = "send"

    def __post_init__(self):
        modes = sum([self.rate is not None, self.concurrency > 0, self.trace is not None])
        if modes != 1:
            raise InputError("give exactly one of an arrival rate (--rate), a concurrency "
                             "(--concurrency) or a trace (--trace)")
        if self.trace is not None:
            # rows built in Python (ui/state.py, a notebook) may hold NumPy scalars: lengths become
            # Python ints here, the one boundary every trace crosses (costs._grid uses int.bit_length)
            self.trace = [(float(t), _length(p, "prompt length"), _length(o, "output length"), tuple(keys),
                           _length(k, "prefix key tokens", 0)) for t, p, o, keys, k in self.trace]
            self.num_requests = len(self.trace) if not self.num_requests else min(self.num_requests, len(self.trace))
        if self.num_requests < 1:
            raise InputError(f"requests={self.num_requests} must be >= 1")
        if not 0 <= self.warmup_requests < self.num_requests:
            raise InputError(f"warmup requests {self.warmup_requests} must be in 0..{self.num_requests - 1}")
        if self.ramp_up_s < 0 or self.think_time_s < 0:
            raise InputError("ramp-up and think time must be >= 0")
        if not (self.send_gap_s >= 0 and math.isfinite(self.send_gap_s)):
            raise InputError(f"send gap {self.send_gap_s!r} s must be a finite number >= 0")
        if self.ttft_clock not in ("send", "slot"):
            raise InputError(f"TTFT clock {self.ttft_clock!r}; valid: send, slot")
        g, tok = self.shared_prefix
        if g < 0 or tok < 0:
            raise InputError(f"shared prefix {self.shared_prefix}: groups and tokens must be >= 0")

    @property
    def closed_loop(self) -> bool:
        return self.concurrency > 0

    def describe(self) -> dict:
        d = {"requests": self.num_requests, "seed": self.seed}
        if self.trace is not None:
            d["trace"] = self.trace_name
        else:
            d["prompt_len"] = self.prompt_len.text
            d["output_len"] = self.output_len.text
        if self.rate is not None:
            d["rate"] = [list(s) for s in self.rate.segments] if not self.rate.is_constant else self.rate.segments[0][0]
            d["arrival_cv"] = self.arrival_cv
        if self.closed_loop:
            d["concurrency"] = self.concurrency
            d["think_time_s"] = self.think_time_s
            if self.ramp_up_s:
                d["ramp_up_s"] = self.ramp_up_s
        if self.warmup_requests:
            d["warmup_requests"] = self.warmup_requests
        if self.client:
            d["client"] = self.client
            d["client_options"] = dict(self.client_options)
            d["ttft_clock"] = self.ttft_clock
        if self.send_gap_s:
            d["send_gap_s"] = self.send_gap_s
        if self.shared_prefix[0]:
            d["shared_prefix"] = {"groups": self.shared_prefix[0], "tokens": self.shared_prefix[1]}
        return d


class RequestSource:
    """Makes the workload's requests in issue order: all of them up front for open loop and
    traces (`open_loop()`), one at a time for closed-loop clients (`next(now, client)`)."""

    def __init__(self, wl: ServingWorkload):
        self.wl = wl
        self.rng = np.random.default_rng(wl.seed)
        n = wl.num_requests
        if wl.trace is None:
            self._prompts = wl.prompt_len.sample(self.rng, n)
            self._outputs = wl.output_len.sample(self.rng, n)
            groups = wl.shared_prefix[0]
            self._groups = self.rng.integers(0, groups, size=n) if groups else None
            self._arrivals = (arrival_times(n, wl.rate, self.rng, wl.arrival_cv)
                              if wl.rate is not None else None)
        self.issued = 0
        self.start_offsets = (self.rng.uniform(0, wl.ramp_up_s, size=wl.concurrency)
                              if wl.closed_loop and wl.ramp_up_s > 0 else None)
        if wl.closed_loop and wl.send_gap_s > 0:  # a serial sender: slot k's first request leaves k gaps late
            gaps = np.arange(wl.concurrency, dtype=float) * wl.send_gap_s
            self.start_offsets = gaps if self.start_offsets is None else self.start_offsets + gaps
        self._started: set = set()  # closed-loop clients that issued their first request

    def _make(self, i: int, arrival_s: float, client: int = -1) -> Request:
        wl = self.wl
        if wl.trace is not None:
            _, p, o, keys, ktok = wl.trace[i]
            return Request(i, arrival_s, p, o, keys, ktok, client)
        p, o = int(self._prompts[i]), int(self._outputs[i])
        keys, ktok = (), 0
        if self._groups is not None and wl.shared_prefix[1] > 0:
            ktok = min(wl.shared_prefix[1], p - 1)
            if ktok > 0:
                keys = (("prefix", int(self._groups[i]), ktok),)
        return Request(i, arrival_s, p, o, keys, ktok, client)

    def open_loop(self) -> list[Request]:
        wl = self.wl
        if wl.trace is not None:
            t0 = wl.trace[0][0]
            reqs = [self._make(i, wl.trace[i][0] - t0) for i in range(wl.num_requests)]
        else:
            reqs = [self._make(i, float(self._arrivals[i])) for i in range(wl.num_requests)]
        self.issued = len(reqs)
        return reqs

    def next(self, now: float, client: int) -> Request | None:
        if self.issued >= self.wl.num_requests:
            return None
        r = self._make(self.issued, now, client)
        self.issued += 1
        if client not in self._started:
            self._started.add(client)
            if self.wl.ttft_clock == "slot" and self.start_offsets is not None:
                # every first-wave slot is acquired at t = 0 (+ its ramp-up start): the clock runs
                # while the client is still sending the requests ahead of this one
                ramp = now - client * self.wl.send_gap_s
                r.clock_s = max(0.0, min(now, ramp))
        return r


# ---- traces --------------------------------------------------------------------------------

def _num(value: str, col: str, where: str, integer: bool = True):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {col}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {col}={value!r} is not a finite number")
    if integer:
        if not v.is_integer():
            raise InputError(f"{where}: {col}={value!r} must be an integer")
        if v < 0:
            raise InputError(f"{where}: {col}={int(v)} must be >= 0")
        return int(v)
    return v


_AZURE_TS = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:\.(\d+))?")


def _azure_time(value: str, where: str) -> float:
    m = _AZURE_TS.match(value.strip())
    if m:
        base = datetime.fromisoformat(m.group(1).replace("T", " "))
        frac = float("0." + m.group(2)) if m.group(2) else 0.0
        return base.timestamp() + frac
    return _num(value, "TIMESTAMP", where, integer=False)


def load_trace(path: str) -> tuple[list, str]:
    """[(arrival_s, prompt_tokens, output_tokens, prefix_keys, key_tokens)] and a format name."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"trace file {path!r} not found")
    text = p.read_text(errors="replace")
    if not text.strip():
        raise InputError(f"trace {path!r} is empty")
    if p.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        rows, fmt = _load_mooncake(text, path), "mooncake"
    else:
        rows, fmt = _load_csv(text, path)
    if not rows:
        raise InputError(f"trace {path!r} has no requests")
    return rows, fmt


def _load_csv(text: str, path: str) -> tuple[list, str]:
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InputError(f"trace {path!r} is empty") from None
    cols = {h.lower(): i for i, h in enumerate(header)}
    if "contexttokens" in cols or "generatedtokens" in cols or "timestamp" in cols and "request tokens" not in cols:
        fmt, need = "azure", ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    elif "request tokens" in cols or "response tokens" in cols:
        fmt, need = "burstgpt", ("Timestamp", "Request tokens", "Response tokens")
    else:
        raise InputError(f"trace {path!r} line 1: unknown CSV header {','.join(header)!r}; expected "
                         f"Azure (TIMESTAMP,ContextTokens,GeneratedTokens) or BurstGPT "
                         f"(Timestamp,Model,Request tokens,Response tokens,...)")
    for c in need:
        if c.lower() not in cols:
            raise InputError(f"trace {path!r} line 1: missing column {c!r} ({fmt} traces need "
                             f"{', '.join(need)})")
    it, ip, io = (cols[c.lower()] for c in need)
    rows, prev = [], -math.inf
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not x.strip() for x in rec):
            continue
        where = f"trace {path!r} line {lineno}"
        if len(rec) < len(header):
            raise InputError(f"{where}: {len(rec)} fields, the header has {len(header)}")
        t = _azure_time(rec[it], where) if fmt == "azure" else _num(rec[it], need[0], where, integer=False)
        prompt = _num(rec[ip], need[1], where)
        out = _num(rec[io], need[2], where)
        if t < prev:
            raise InputError(f"{where}: timestamp {rec[it].strip()} is earlier than the line before "
                             f"(traces must be sorted by time)")
        prev = t
        if fmt == "burstgpt" and out == 0:
            continue  # BurstGPT logs failed requests with 0 response tokens
        rows.append((t, max(1, prompt), max(1, out), (), 0))
    return rows, fmt


def _load_mooncake(text: str, path: str) -> list:
    rows, prev = [], -math.inf
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"trace {path!r} line {lineno}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a JSON object per line")
        for c in ("timestamp", "input_length", "output_length"):
            if c not in d:
                raise InputError(f"{where}: missing key {c!r} (Mooncake traces need timestamp, "
                                 f"input_length, output_length)")
        t = _num(d["timestamp"], "timestamp", where, integer=False) / 1000.0  # Mooncake timestamps are ms
        prompt = _num(d["input_length"], "input_length", where)
        out = _num(d["output_length"], "output_length", where)
        if t < prev:
            raise InputError(f"{where}: timestamp {d['timestamp']} is earlier than the line before "
                             f"(traces must be sorted by time)")
        prev = t
        hashes = d.get("hash_ids") or []
        if not isinstance(hashes, list):
            raise InputError(f"{where}: hash_ids must be a list")
        # Only whole blocks that lie inside the prompt can be shared; key i covers blocks 0..i.
        n_full = min(len(hashes), max(0, prompt - 1) // MOONCAKE_BLOCK_TOKENS)
        keys, chain = [], 0
        for h in hashes[:n_full]:
            chain = hash((chain, h))  # a chained key: equal keys mean equal prefixes up to here
            keys.append(("mc", chain))
        keys = tuple(keys)
        rows.append((t, max(1, prompt), max(1, out), keys, MOONCAKE_BLOCK_TOKENS if keys else 0))
    return rows
