"""Load and query costs of hwmodels.profiles (aiconfigurator-core tables).

    PYTHONPATH=. python tests/bench/bench_profiles.py [system ...]

Prints the load time of every table (first load includes the lazy pandas import) and the mean
query time of GemmTable.time_s over 10,000 random shapes after a warm-up: once on fresh shapes
(cache misses: the interpolation itself) and once repeating them (lru_cache hits).
"""
import sys
import time

import numpy as np

from hwmodels import profiles

N = 10_000


def _shapes(rng, n):
    m = np.exp2(rng.uniform(0, 16, n)).astype(int)  # 1 .. 65536 tokens
    nk = np.exp2(rng.uniform(5, 16, (n, 2))).astype(int)  # 32 .. 65536
    return [(int(a), int(b), int(c)) for a, (b, c) in zip(m, nk)]


def _mean_us(fn, args):
    t = time.perf_counter()
    for a in args:
        fn(*a)
    return (time.perf_counter() - t) / len(args) * 1e6


def main(systems):
    if not profiles.aiconfigurator_systems():
        print(f"aiconfigurator-core {profiles.AIC_VERSION} is not installed")
        return
    print("table load times (first call, cached afterwards):")
    t = time.perf_counter()
    import pandas  # noqa: F401  the loaders import it lazily; time it apart
    print(f"  pandas import                      {time.perf_counter() - t:7.3f} s")
    loaders = [("gemm bf16", lambda s: profiles.load_gemm_table(s, "bf16")),
               ("gemm fp8", lambda s: profiles.load_gemm_table(s, "fp8")),
               ("context attention bf16", profiles.load_attention_table),
               ("decode attention bf16", profiles.load_decode_attention_table),
               ("nccl", profiles.load_nccl_table)]
    for system in systems:
        for name, load in loaders:
            t = time.perf_counter()
            table = load(system)
            dt = time.perf_counter() - t
            print(f"  {system:10s} {name:24s}{dt:7.3f} s  {table.source if table else 'absent'}")

    rng = np.random.default_rng(0)
    for system in systems:
        table = profiles.load_gemm_table(system, "bf16")
        if table is None:
            continue
        warm, shapes = _shapes(rng, 1000), _shapes(rng, N)
        _mean_us(table.time_s, warm)
        miss = _mean_us(table.time_s, shapes)
        hit = _mean_us(table.time_s, shapes)
        none = sum(table.time_s(*s) is None for s in shapes)
        print(f"GemmTable.time_s {system}: {miss:6.2f} µs/query fresh shapes, "
              f"{hit:5.2f} µs cached ({N} random shapes, {none} below the grid -> None)")
        attn = profiles.load_attention_table(system)
        if attn is not None:
            args = [(int(b), int(s), 32, 8, 128) for b, s in
                    zip(rng.integers(1, 64, N), np.exp2(rng.uniform(4, 15, N)))]
            us = _mean_us(attn.time_s, args)
            print(f"AttentionTable.time_s {system}: {us:6.2f} µs/query fresh")
        nccl = profiles.load_nccl_table(system)
        if nccl is not None:
            args = [("all_reduce", 8, float(x)) for x in np.exp2(rng.uniform(10, 30, N))]
            print(f"NcclTable.time_s {system}: {_mean_us(nccl.time_s, args):6.2f} µs/query fresh")


if __name__ == "__main__":
    main(sys.argv[1:] or ["h100_sxm", "a100_sxm", "b200_sxm"])
