"""Benchmark: how fast the dashboard re-renders when an interaction hits a cached result.

Two measurements:
1. Server side (streamlit.testing.v1.AppTest, always): the script run of the Train page cold
   (first estimate in the process), then the first interaction that only changes the display
   (memory unit), then a return to an already-computed plan (cache hit), then a new plan (miss);
   the same for the Cluster and Validate pages.
2. In the browser (when Playwright and Chromium are installed): `streamlit run ui/app.py` on a
   free port, headless Chromium; time from the interaction to the updated chart/text on screen.

Target: an interaction with a cached result re-renders in under 1 s. Run:
    python tests/bench/bench_ui.py [--no-browser]
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "ui" / "app.py")
TARGET_S = 1.0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def server_side() -> list[tuple[str, float]]:
    from streamlit.testing.v1 import AppTest
    out = []
    at = AppTest.from_file(APP, default_timeout=300)
    out.append(("cluster page, first run in the process", timed(at.run)))
    from ui import state  # after the first run: imported inside a Streamlit runtime
    at.number_input(key="cluster.nodes").set_value(4)
    out.append(("cluster page, nodes 2 -> 4 (new curve)", timed(at.run)))
    at.number_input(key="cluster.nodes").set_value(2)
    out.append(("cluster page, nodes back to 2 (cached curve)", timed(at.run)))

    at.switch_page("pages/train.py")
    out.append(("train page, first estimate in the process (cold)", timed(at.run)))
    misses = state.CALLS["train_estimate"]
    at.radio(key="train.mem_unit").set_value("GB")
    out.append(("train page, FIRST INTERACTION: memory unit GiB -> GB (cached estimate)", timed(at.run)))
    assert state.CALLS["train_estimate"] == misses, "display-only change recomputed the estimate"
    at.text_input(key="train.plan").set_value("tp=4,pp=1,mb=1")
    out.append(("train page, new plan tp=4 (estimate computed)", timed(at.run)))
    at.text_input(key="train.plan").set_value("tp=2,pp=2,mb=1")
    out.append(("train page, back to plan tp=2,pp=2 (cached estimate)", timed(at.run)))
    assert state.CALLS["train_estimate"] == misses + 1
    reruns = []
    for unit in ("GiB", "GB") * 5:
        at.radio(key="train.mem_unit").set_value(unit)
        reruns.append(timed(at.run))
    out.append(("train page, 10 more display-only reruns (median)", statistics.median(reruns)))

    at.switch_page("pages/validate.py")
    out.append(("validate page, first run (suite computed)", timed(at.run)))
    at.switch_page("pages/train.py").run()
    at.switch_page("pages/validate.py")
    out.append(("validate page, revisit (cached report)", timed(at.run)))
    assert not at.exception
    return out


# ---- in a browser ------------------------------------------------------------------------------

def _chromium() -> str | None:
    return next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _idle(page, timeout_ms=60_000):
    """Wait until Streamlit's 'running' status widget is gone."""
    page.wait_for_timeout(50)
    page.wait_for_function("!document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout_ms)


def _chart_has(page, text, timeout_ms=60_000):
    page.wait_for_function(
        "t => [...document.querySelectorAll('.js-plotly-plot')].some(e => e.textContent.includes(t))",
        arg=text, timeout=timeout_ms, polling=20)


def browser_side() -> list[tuple[str, float]] | str:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: playwright is not installed (.ci/install_browser.sh)"
    chromium = _chromium()
    if chromium is None:
        return "skipped: no chromium binary (.ci/install_browser.sh)"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
                             "--client.toolbarMode", "minimal"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    return "skipped: streamlit did not start"
                time.sleep(0.2)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage"]
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, headless=True, args=args)
            page = b.new_page(viewport={"width": 1500, "height": 2000})
            t0 = time.perf_counter()
            page.goto(f"{url}/train?model=llama3-8b&cluster=dgx-h100&nodes=4&plan=tp%3D2%2Cpp%3D2%2Cmb%3D1",
                      wait_until="domcontentloaded")
            _chart_has(page, "per-device memory (GiB)")
            _idle(page)
            out.append(("browser: train page load with a cold estimate", time.perf_counter() - t0))

            def unit(u):
                t0 = time.perf_counter()
                page.get_by_role("radiogroup", name="Memory unit").get_by_text(u, exact=True).click()
                _chart_has(page, f"per-device memory ({u})")
                dt = time.perf_counter() - t0
                _idle(page)
                return dt

            out.append(("browser: FIRST INTERACTION memory unit -> GB, chart redrawn", unit("GB")))
            toggles = [unit(u) for u in ("GiB", "GB") * 3]
            out.append((f"browser: {len(toggles)} more unit toggles, median (max {max(toggles) * 1e3:.0f} ms)",
                        statistics.median(toggles)))

            box = page.get_by_label("Plan", exact=True).and_(page.locator("input"))

            def plan(text, shown):
                box.fill(text)
                t0 = time.perf_counter()
                box.press("Enter")
                page.get_by_text(shown, exact=False).first.wait_for(timeout=60_000)
                _idle(page)
                return time.perf_counter() - t0

            out.append(("browser: new plan tp=4 (estimate computed), result shown",
                        plan("tp=4,pp=1,mb=1", "dp=8,tp=4,pp=1")))
            out.append(("browser: back to plan tp=2,pp=2 (cached), result shown",
                        plan("tp=2,pp=2,mb=1", "dp=8,tp=2,pp=2")))
            swaps = [plan(*q) for q in (("tp=4,pp=1,mb=1", "dp=8,tp=4,pp=1"),
                                        ("tp=2,pp=2,mb=1", "dp=8,tp=2,pp=2")) * 3]
            out.append((f"browser: {len(swaps)} more cached plan switches, median (max {max(swaps) * 1e3:.0f} ms)",
                        statistics.median(swaps)))

            page2 = b.new_page(viewport={"width": 1500, "height": 2000})
            t0 = time.perf_counter()
            page2.goto(page.url, wait_until="domcontentloaded")
            _chart_has(page2, "per-device memory (GB)")
            _idle(page2)
            out.append(("browser: same link in a new tab (new session, cached estimate)", time.perf_counter() - t0))
            b.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def main():
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (1 min)")
    print("server side (AppTest script runs):")
    for name, s in server_side():
        print(f"  {name:<72} {s * 1e3:9.1f} ms")
    if "--no-browser" in sys.argv:
        return
    print("in the browser (headless Chromium, time until the page shows the change):")
    res = browser_side()
    if isinstance(res, str):
        print(f"  {res}")
        return
    for name, s in res:
        print(f"  {name:<72} {s * 1e3:9.1f} ms")
    print(f"target for an interaction with a cached result: < {TARGET_S * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
