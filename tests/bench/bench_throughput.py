"""Benchmark: wall time of `clusterplan validate throughput` (every row of TensorRT-LLM v0.14's
offline throughput table replayed with trtllm-bench's limits; issue #22 asks for <= 3 minutes on
the project machine). Run:
    python tests/bench/bench_throughput.py
"""
from __future__ import annotations

import time

from validation.throughput import run_suite


def main() -> None:
    t0 = time.perf_counter()
    doc = run_suite()
    wall = time.perf_counter() - t0
    print(f"{len(doc['cases'])} rows in {wall:.1f} s ({wall / max(1, len(doc['cases'])) * 1e3:.0f} ms/row); "
          f"MAPE {doc['mape_pct']:.1f}%")


if __name__ == "__main__":
    main()
