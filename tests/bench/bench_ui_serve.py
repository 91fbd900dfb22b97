"""Benchmark: Serve page re-render times server side (streamlit.testing.v1.AppTest) — the cold
`plan serve` run, then interactions whose results are cached (fleet selection, going back to the
DES check, returning to a simulated workload), which should take under 1 s each. Run:
    python tests/bench/bench_ui_serve.py
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
TARGET_S = 1.0
QUERY = dict(model="llama3-8b", devices="h100-sxm:4,a100-sxm-80g:4", rate="4", prompt_len="512", output_len="128",
             requests="200", disagg="off", run="1")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    logging.disable(logging.WARNING)
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.switch_page("pages/serve.py")
    at.query_params.update(QUERY)
    out = [("serve page, plan serve cold (capacity probes + ILP + checks)", timed(at.run))]
    from ui import state
    misses = state.CALLS["plan_serve"]
    fleets = at.selectbox(key="serve.fleet").options
    at.selectbox(key="serve.fleet").set_value(fleets[1])
    out.append(("select fleet #2 (its DES check computed)", timed(at.run)))
    cached = []
    for f in (fleets[0], fleets[1]) * 3:
        at.selectbox(key="serve.fleet").set_value(f)
        cached.append(timed(at.run))
    out.append((f"select a fleet again (cached), median of {len(cached)}", statistics.median(cached)))
    out.append(("  worst of those", max(cached)))
    at.button(key="sim_go").click()
    out.append(("simulate this fleet (computed)", timed(at.run)))
    at.button(key="sim_hide").click()
    out.append(("back to the DES check (cached)", timed(at.run)))
    assert state.CALLS["plan_serve"] == misses, "a display change re-ran plan serve"
    for name, t in out:
        flag = "" if "cold" in name or "computed" in name else ("  OK" if t < TARGET_S else "  SLOW")
        print(f"{t:8.3f} s  {name}{flag}")


if __name__ == "__main__":
    main()
