"""The API-server stage in front of an engine: HTTP, tokenisation and detokenisation on one CPU
thread, competing with the intake of new requests.

In the OpenAI-compatible servers the engine never sees text. vLLM's API server parses the HTTP
request, tokenises the prompt (in a single-thread executor: vLLM issue #25301) and hands token
ids to the engine-core process over ZMQ (vLLM PR #17546); the engine's output tokens come back to
the same process, which detokenises them incrementally (vllm/v1/engine/detokenizer.py, a
`tokenizers` DecodeStream) and streams one server-sent event per token. SGLang's TokenizerManager
and trtllm-serve's OpenAI server do the same work in one process in front of their schedulers.

Model, per replica (one API-server process):
- intake is FIFO on one thread: a request reaches the scheduler after
      request_s + prompt_len · tokenize_s_per_token
  of that thread's time, behind the requests before it (a single-server queue);
- streaming the output (detokenise + one event per token) takes the same thread:
      load = output tokens/s · (detokenize_s_per_token + stream_s_per_token)
  and intake runs in the share left, so its service time is divided by (1 − load)
  (processor sharing of one core: Kleinrock, "Time-shared systems", J. ACM 14(2) 1967). The output rate is
  that of the replica's latest pass (0 while it idles).
The figures are component-level measurements (simulator/data/frontend.yaml: this project's own
tokenizer/HTTP measurement, or the published numbers); `off` removes the stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hwmodels.devices import safe_yaml
from hwmodels.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data" / "frontend.yaml"
PROFILES = ("off", "on", "measured", "published")
# Numerical guard, not a fitted figure: with streaming taking more than this share of the thread
# the intake would never finish; the frontend is reported as saturated instead.
MAX_LOAD = 0.95


@dataclass(frozen=True)
class FrontendCosts:
    profile: str
    request_s: float
    tokenize_s_per_token: float
    detokenize_s_per_token: float
    stream_s_per_token: float
    source: str = ""

    def intake_s(self, prompt_len: int) -> float:
        """Thread time to take one request in: HTTP + JSON, then tokenise the prompt."""
        return self.request_s + prompt_len * self.tokenize_s_per_token

    @property
    def output_s_per_token(self) -> float:
        """Thread time per output token: incremental detokenisation + one streamed event."""
        return self.detokenize_s_per_token + self.stream_s_per_token


_CACHE: dict = {}


def frontend_costs(profile: str | None) -> FrontendCosts | None:
    """The costs of a frontend profile (`measured`, `published`; `on` = measured), None for off."""
    p = str(profile or "off").lower()
    if p not in PROFILES:
        raise InputError(f"frontend {profile!r}; valid: {', '.join(PROFILES)}")
    if p == "off":
        return None
    p = "measured" if p == "on" else p
    if p not in _CACHE:
        data = safe_yaml(DATA.read_text())["profiles"][p]
        _CACHE[p] = FrontendCosts(p, float(data["request_s"]), float(data["tokenize_s_per_token"]),
                                  float(data["detokenize_s_per_token"]),
                                  float(data["stream_s_per_token"]), str(data.get("source", "")))
    return _CACHE[p]


class Frontend:
    """The API-server thread of one replica (see module docstring)."""

    __slots__ = ("costs", "free_at", "load", "intakes", "delay_sum_s", "max_load", "saturated")

    def __init__(self, costs: FrontendCosts):
        self.costs = costs
        self.free_at = 0.0  # when the thread has finished the intake work queued so far
        self.load = 0.0  # share of the thread taken by output streaming
        self.intakes = 0
        self.delay_sum_s = 0.0
        self.max_load = 0.0
        self.saturated = False

    def output_rate(self, tokens_per_s: float) -> None:
        """The replica streams `tokens_per_s` output tokens (its latest pass)."""
        load = tokens_per_s * self.costs.output_s_per_token
        if load > MAX_LOAD:
            self.saturated = True
            load = MAX_LOAD
        self.load = load
        if load > self.max_load:
            self.max_load = load

    def intake(self, now: float, prompt_len: int) -> float:
        """When a request that reached the server at `now` is handed to the scheduler."""
        start = now if now > self.free_at else self.free_at  # FIFO behind earlier intakes
        self.free_at = start + self.costs.intake_s(prompt_len) / (1.0 - self.load)
        self.intakes += 1
        self.delay_sum_s += self.free_at - now
        return self.free_at

    def summary(self) -> dict:
        return {"profile": self.costs.profile, "requests": self.intakes,
                "mean_intake_s": self.delay_sum_s / self.intakes if self.intakes else 0.0,
                "max_output_load": self.max_load, "saturated": self.saturated}
