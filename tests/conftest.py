"""Shared test helpers."""
from __future__ import annotations

import pytest


@pytest.fixture
def cut_decode_run():
    """Run `Replica._decode_run` on a stand-in replica (passes of d0, d0 + slope, ... s from t = 0,
    at most `steps`) and interrupt it at `at` s, as an arrival does; extra attributes of the
    stand-in (a receive skipper, its starting counter) as keywords. Returns (passes run, end time,
    the stand-in)."""
    import simpy
    from types import SimpleNamespace

    from simulator.serving.engine import Replica

    def run(cut_after: int, d0: float, slope: float, steps: int, at: float, **fields):
        env = simpy.Environment()
        fake = SimpleNamespace(env=env, in_run=False, cut_after=cut_after, recv=None,
                               _steps_within=Replica._steps_within)
        fake.__dict__.update(fields)
        out = {}

        def body():
            out["steps"] = yield from Replica._decode_run(fake, 0.0, d0, slope, steps)
            out["end"] = env.now
        p = env.process(body())

        def cut():
            yield env.timeout(at)
            p.interrupt()
        env.process(cut())
        env.run()
        return out["steps"], out["end"], fake
    return run
