"""Long fuzz profile (issue #10): >= 10,000 hypothesis cases per input surface.

    python tests/fuzz/long_profile.py                    # every surface, 10,000 cases each
    python tests/fuzz/long_profile.py -n 500 cli_train units
    python tests/fuzz/long_profile.py --jobs 2           # surfaces in parallel processes

Not collected by pytest (tests/fuzz/conftest.py); tests/test_fuzz.py runs the same surfaces with the
CI profile. Prints, per surface, the cases run, how many were accepted and refused (exit 2 /
InputError), the time, and the first failure (hypothesis's shrunk counterexample) if any; exits 1
if any surface failed. Exit-2 messages that named none of the mutated flags are listed as a
heuristic (not a failure).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_surface(name: str, n: int, seed: int | None) -> dict:
    from hypothesis import given, seed as hseed, settings

    import surfaces
    s = surfaces.SURFACES[name]
    surfaces.UNNAMED.clear()
    tally: Counter = Counter()

    @settings(surfaces.LONG, max_examples=n)
    @given(s.strategy)
    def prop(example):
        tally[s.check(example)] += 1

    if seed is not None:
        prop = hseed(seed)(prop)
    t0 = time.perf_counter()
    failure = None
    try:
        prop()
    except BaseException as e:  # noqa: BLE001 - reported
        if isinstance(e, KeyboardInterrupt):
            raise
        failure = "".join(traceback.format_exception(e))[-6000:]
    return {"surface": name, "cases": sum(tally.values()), "ok": tally["ok"], "refused": tally["error"],
            "seconds": round(time.perf_counter() - t0, 1), "failure": failure,
            "unnamed": [f"{' '.join(a)} -> {m}" for a, m in surfaces.UNNAMED[:5]],
            "unnamed_count": len(surfaces.UNNAMED)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("surfaces", nargs="*", help="surfaces to run (default: all)")
    ap.add_argument("-n", "--cases", type=int, default=10_000, help="cases per surface (default 10000)")
    ap.add_argument("--jobs", type=int, default=1, help="surfaces run in parallel processes")
    ap.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    import surfaces
    names = args.surfaces or list(surfaces.SURFACES)
    bad = [x for x in names if x not in surfaces.SURFACES]
    if bad:
        ap.error(f"unknown surface(s) {bad}; valid: {', '.join(surfaces.SURFACES)}")
    results = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            futs = [ex.submit(run_surface, x, args.cases, args.seed) for x in names]
            for f in futs:
                results.append(f.result())
                _print(results[-1])
    else:
        for x in names:
            results.append(run_surface(x, args.cases, args.seed))
            _print(results[-1])
    print(f"\n{'surface':<18}{'cases':>8}{'accepted':>10}{'refused':>9}{'seconds':>9}  result")
    for r in results:
        print(f"{r['surface']:<18}{r['cases']:>8}{r['ok']:>10}{r['refused']:>9}{r['seconds']:>9}  "
              f"{'FAIL' if r['failure'] else 'pass'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["failure"] for r in results) else 0


def _print(r: dict) -> None:
    print(f"== {r['surface']}: {r['cases']} cases ({r['ok']} accepted, {r['refused']} refused) in "
          f"{r['seconds']} s" + (" — FAILED" if r["failure"] else ""), flush=True)
    if r["failure"]:
        print(r["failure"], flush=True)
    if r["unnamed_count"]:
        print(f"   {r['unnamed_count']} refusal(s) named none of the mutated flags, e.g.:")
        for u in r["unnamed"]:
            print(f"     {u[:300]}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
