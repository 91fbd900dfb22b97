#!/usr/bin/env python3
"""Mutation testing of the cost-model core with cosmic-ray (https://cosmic-ray.readthedocs.io).

For every module in MODULES: copy the repository's packages and tests to a scratch directory
(never the working tree), let `cosmic-ray init` enumerate the mutants, keep a seeded random sample
(the rest are marked skipped), let `cosmic-ray exec` apply each mutant in the copy and run that
module's own fast test files (pytest -x), then print the kill rate per module and the surviving
mutants. Mutants listed in EQUIVALENT (same behaviour as the original) are excluded from the rate.

    python tests/mutation/run.py                     # 25 mutants per module
    python tests/mutation/run.py --sample 0          # every mutant (hours on 2 cores)
    python tests/mutation/run.py --ci                # the fixed CI sample; exit 1 below 85%
    python tests/mutation/run.py -m simulator/memory.py --sample 40 --seed 3

Exit status: 1 if any module (or, with --ci, the sample as a whole) kills fewer than --min-rate.
"""
from __future__ import annotations

import argparse
import ast
import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# ---- the one place to update when modules move or tests are renamed --------------------------
# module (path under the repository root) -> its own fast test files (pin tests first: -x stops
# at the first failure, so a killed mutant costs little).
MODULES: dict[str, list[str]] = {
    "hwmodels/kernels.py": ["tests/test_pin_kernels.py", "tests/test_spine.py", "tests/test_layer.py",
                            "tests/test_harness.py::test_kernel_model_from_profile_answers_the_kernel_queries"],
    "hwmodels/collectives.py": ["tests/test_pin_collectives.py", "tests/test_collectives.py"],
    "hwmodels/topology.py": ["tests/test_pin_topology.py", "tests/test_pin_collectives.py",
                             "tests/test_collectives.py"],
    "simulator/ops.py": ["tests/test_pin_ops.py", "tests/test_layer.py", "tests/test_pin_analytic.py",
                         "tests/test_spine.py"],
    "simulator/memory.py": ["tests/test_pin_memory.py", "tests/test_spine.py", "tests/test_published.py"],
    "simulator/analytic.py": ["tests/test_pin_analytic.py", "tests/test_spine.py", "tests/test_published.py"],
    "simulator/des.py": ["tests/test_des.py", "tests/test_spine.py"],
    "simulator/serving/scheduler.py": ["tests/test_pin_scheduler.py", "tests/test_serving.py"],
    "simulator/serving/engine.py": ["tests/test_pin_engine.py", "tests/test_pin_scheduler.py",
                                    "tests/test_serving.py"],
    "simulator/serving/costs.py": ["tests/test_pin_costs.py", "tests/test_layer.py", "tests/test_serving.py"],
    "simulator/serving/kv_cache.py": ["tests/test_pin_kv_cache.py", "tests/test_pin_scheduler.py",
                                      "tests/test_serving.py"],
    "planner/ilp.py": ["tests/test_invariants.py::test_time_limited_ilp_with_an_incumbent_is_not_called_optimal",
                       "tests/test_invariants.py::test_time_limited_ilp_without_a_solution_is_not_called_infeasible",
                       "tests/test_planner.py"],
}
# Packages and files copied to the scratch directory (the code under test and its data).
COPY = ["hwmodels", "simulator", "planner", "validation", "ui", "tests", "pyproject.toml"]
# The CI sample: a few mutants of each module, fixed by the seed (it follows the code, so it
# changes only when the modules change).
CI_SAMPLE, CI_SEED = 4, 20250101
# Equivalent mutants, excluded from the kill rate: (module, operator, line, reason). A mutant
# whose behaviour equals the original's is not a missing test. Lines follow the code; re-check
# them when a module changes.
EQUIVALENT: list[tuple[str, str, int | tuple[int, int], str]] = [
    # (module, operator name or a part of it, line or (line, column), reason)
    ("simulator/serving/scheduler.py", "ReplaceComparisonOperator_LtE_Eq", (249, 38),
     "pbudget >= 0 in the running-prefill loop (every chunk there is <= pbudget): <= 0 is == 0"),
    *[("simulator/serving/scheduler.py", op, (262, col),
       "with chunked prefill off a prompt is admitted whole and finishes its prefill in that pass, "
       "so no running prefill reaches this clause (it needs chunked_prefill False)")
      for op, col in (("ReplaceBinaryOperator_Add_", 75), ("ReplaceComparisonOperator_Lt_", 83))],
    *[("simulator/serving/scheduler.py", op, 363,
       "per_cycle = n_dec >= 1 here (n_dec == 0 returned above): == 0, < 0, <= 0, is 0 all False")
      for op in ("ReplaceComparisonOperator_Eq_Lt", "ReplaceComparisonOperator_Eq_LtE",
                 "ReplaceComparisonOperator_Eq_Is")],
    ("simulator/serving/scheduler.py", "ReplaceBinaryOperator_Add_", 204,
     "req.computed after leaving the decode set: preemption resets it to 0 right after, and a "
     "finished request's is never read"),
    ("simulator/serving/scheduler.py", "ReplaceComparisonOperator_GtE_Eq", 440,
     "output lengths are >= 1 (workload rejects < 1) and generated grows by one from below: "
     ">= is =="),
    *[("hwmodels/collectives.py", op, line,
       "the `or 10**9` / `or 1e9` fallback: nvls_min_ranks is None exactly when the tier has no "
       "NVLS line, so an NVLS line never meets it")
      for line in (328, 486, 559) for op in ("ReplaceBinaryOperator_Pow_", "NumberReplacer")],
    ("hwmodels/collectives.py", "NumberReplacer", 608,
     "a 2-rank torus group spans at least one axis: the sum of spacings is >= 1, `or 1` unused"),
    ("hwmodels/topology.py", "ReplaceComparisonOperator_Eq_LtE", 603, "an array size is never < 0"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_LtE_Eq", 156,
     "rows = a batch's sample count, never negative: <= 0 is == 0"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_LtE_Eq", 171,
     "n = a batch's decode count, never negative: <= 0 is == 0"),
    ("hwmodels/collectives.py", "NumberReplacer", 662,
     "collective_s: every group of > 1 rank has an auto line (ring/p2p/torus), so min() never "
     "falls back to its default"),
    ("hwmodels/topology.py", "NumberReplacer", (495, 21),
     "_intra's initial tier index: k > 1 needs an intra-node tier, so the loop always sets it"),
    *[("simulator/ops.py", "ReplaceComparisonOperator_Eq_Is", line,
       "phase literals fwd/bwd/recompute are interned by CPython: `is` == `==`")
      for line in (273, 360, 363, 371)],
    *[("simulator/ops.py", "ReplaceTrueWithFalse", (line, 30),
       "slots=False: same fields, frozen and equality, only a __dict__ more")
      for line in (38, 52, 67, 95)],
    *[("simulator/serving/scheduler.py", op, 288,
       "a waiting prompt has computed == 0 (preemption resets it; KV-arrived requests are "
       "admitted above): >= 0 / <= 0 agree with == 0")
      for op in ("ReplaceComparisonOperator_Eq_GtE", "ReplaceComparisonOperator_Eq_LtE")],
]
# Cache sizes: every mutant of an `lru_cache(maxsize=...)` argument that still yields an int (or
# a negative one, which lru_cache treats as 0) changes how much is cached, never a result. `/`
# (a float maxsize is a TypeError) is left in: it is killed.
_CACHE_SIZE_OPS = ("NumberReplacer",) + tuple(
    f"ReplaceBinaryOperator_LShift_{o}" for o in ("Add", "Sub", "Mul", "FloorDiv", "Mod", "Pow", "RShift",
                                                  "BitOr", "BitAnd", "BitXor"))
_CACHE_SIZE_LINES = [("hwmodels/kernels.py", line) for line in (82, 83, 109, 110)] + [
    ("hwmodels/collectives.py", 306), ("hwmodels/collectives.py", 466), ("hwmodels/collectives.py", 656),
    ("hwmodels/topology.py", 339), ("hwmodels/topology.py", 417), ("hwmodels/topology.py", 438),
    ("hwmodels/topology.py", 563), ("simulator/serving/costs.py", 241), ("simulator/ops.py", 337),
    ("simulator/ops.py", 407)]
EQUIVALENT += [(mod, op, line, "lru_cache maxsize: changes what is cached, not any result")
               for mod, line in _CACHE_SIZE_LINES for op in _CACHE_SIZE_OPS]


MEMORY_LIMIT_BYTES = 6 * 2 ** 30  # per process (cosmic-ray and every test run it starts)


def _limit_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _cosmic_ray() -> list[str]:
    exe = shutil.which("cosmic-ray")
    if exe is None:
        sys.exit("cosmic-ray is not installed: pip install -e '.[test]'")
    return [exe]


def _config(module: str, tests: list[str], timeout: float) -> str:
    cmd = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -p no:randomly --timeout={int(timeout)} " + " ".join(tests)
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\nexcluded-modules = []\n'
            f'test-command = "{cmd}"\n\n[cosmic-ray.distributor]\nname = "local"\n')


@functools.cache
def _annotation_spans(module: str) -> tuple:
    """((start, end), ...) of every annotation in `module` when it has `from __future__ import
    annotations`: they stay strings that nothing evaluates (no get_type_hints in the package), so
    a mutant inside one (e.g. `int | None` -> `int ** None`) cannot change any output."""
    tree = ast.parse((ROOT / module).read_text())
    if not any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body):
        return ()
    spans = []
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            notes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            notes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in notes]
    return tuple(spans)


def _is_equivalent(module: str, item) -> str | None:
    m = item.mutations[0]
    for mod, op, line, why in EQUIVALENT:
        at = tuple(m.start_pos) if isinstance(line, tuple) else m.start_pos[0]
        named = m.operator_name.endswith(op) or (op.endswith("_") and op in m.operator_name)
        if mod == module and named and at == line:
            return why
    pos = tuple(m.start_pos)
    if any(a <= pos < b for a, b in _annotation_spans(module)):
        return "inside an annotation (postponed evaluation: never evaluated)"
    return None


def run_module(module: str, tests: list[str], work: Path, sample: int, seed: int, timeout: float,
               env: dict) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    def green(files):
        cmd = _config(module, files, timeout).split('test-command = "')[1].split('"')[0].split()
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True).returncode == 0

    # a red baseline would count every mutant as killed: drop (and name) test files that fail
    # without any mutation, e.g. during a refactor that moved what they import
    if not green(tests):
        bad = [f for f in tests if not green([f])]
        print(f"WARNING {module}: without them, as they fail unmutated: {' '.join(bad)}", flush=True)
        tests = [f for f in tests if f not in bad]
        if not tests or not green(tests):
            return {"module": module, "total": 0, "sampled": 0, "killed": 0, "incompetent": 0,
                    "survived": [], "equivalent": [], "seconds": 0.0, "red": True}
    tag = module.replace("/", "_")
    cfg, db = work / f"{tag}.toml", work / f"{tag}.sqlite"
    cfg.write_text(_config(module, tests, timeout))
    db.unlink(missing_ok=True)
    subprocess.run(_cosmic_ray() + ["init", str(cfg), str(db)], cwd=work, env=env, check=True)
    equivalent = []
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        items = list(wdb.work_items)
        keep = [it for it in items if not _is_equivalent(module, it)]
        equivalent = [(it, _is_equivalent(module, it)) for it in items if _is_equivalent(module, it)]
        chosen = keep if sample <= 0 or sample >= len(keep) else random.Random(seed).sample(keep, sample)
        chosen_ids = {it.job_id for it in chosen}
        skip = [it.job_id for it in items if it.job_id not in chosen_ids]
        if skip:
            wdb.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    t0 = time.monotonic()
    # a mutant can blow up a size (e.g. a topology of millions of vertices): cap each test run's
    # address space so it fails with MemoryError instead of taking the machine's memory
    subprocess.run(_cosmic_ray() + ["exec", str(cfg), str(db)], cwd=work, env=env, check=True,
                   preexec_fn=_limit_memory)
    killed, survived, broken = [], [], []
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        for item, result in wdb.completed_work_items:
            if item.job_id not in chosen_ids:
                continue
            m = item.mutations[0]
            where = f"{module}:{m.start_pos[0]}:{m.start_pos[1]} {m.operator_name.split('/')[-1]}"
            if result.test_outcome is not None and result.test_outcome.value == "killed":
                killed.append(where)
            elif result.test_outcome is not None and result.test_outcome.value == "survived":
                survived.append((where, result.diff or ""))
            else:  # incompetent (the mutant cannot be imported or run: killed by construction)
                broken.append(where)
    return {"module": module, "total": len(items), "sampled": len(chosen), "killed": len(killed),
            "incompetent": len(broken), "survived": survived, "equivalent": equivalent,
            "seconds": time.monotonic() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--module", action="append", help="module(s) to mutate (default: all in MODULES)")
    ap.add_argument("--sample", type=int, default=25, help="mutants per module, 0 = all (default 25)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant's test run")
    ap.add_argument("--min-rate", type=float, default=0.85)
    ap.add_argument("--ci", action="store_true", help=f"the fixed CI sample ({CI_SAMPLE} per module, seed {CI_SEED})")
    ap.add_argument("--workdir", help="scratch directory (default: a new temporary one, removed after)")
    ap.add_argument("--diffs", action="store_true", help="print the diff of every surviving mutant")
    args = ap.parse_args(argv)
    if args.ci:
        args.sample, args.seed = CI_SAMPLE, CI_SEED
    modules = args.module or list(MODULES)
    for m in modules:
        if m not in MODULES:
            ap.error(f"{m!r} is not in MODULES: {', '.join(MODULES)}")
        if not (ROOT / m).is_file():
            ap.error(f"{m} does not exist (update MODULES in {Path(__file__).relative_to(ROOT)})")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="clusterplan-mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src, dst = ROOT / name, work / name
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis"))
        elif src.exists():
            shutil.copy2(src, dst)
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    check = subprocess.run([sys.executable, "-c", "import simulator; print(simulator.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not check.startswith(str(work)):
        sys.exit(f"the copy is not what Python imports ({check}); refusing to mutate")
    results = []
    try:
        for m in modules:
            r = run_module(m, MODULES[m], work, args.sample, args.seed, args.timeout, env)
            results.append(r)
            print(f"[{m}] {r['killed'] + r['incompetent']}/{r['sampled']} killed in {r['seconds']:.0f} s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\nmodule                              mutants sampled  killed  survived  rate")
    all_k = all_n = 0
    low = []
    for r in results:
        k, n = r["killed"] + r["incompetent"], r["sampled"]
        if r.get("red"):
            low.append(r["module"])
            print(f"{r['module']:<36}  its tests fail unmutated: not measured")
            continue
        all_k, all_n = all_k + k, all_n + n
        rate = k / n if n else 1.0
        if rate < args.min_rate:
            low.append(r["module"])
        print(f"{r['module']:<36}{r['total']:>7}{n:>8}{k:>8}{len(r['survived']):>10}  {rate:6.1%}")
    total_rate = all_k / all_n if all_n else 1.0
    print(f"{'all':<36}{'':>7}{all_n:>8}{all_k:>8}{all_n - all_k:>10}  {total_rate:6.1%}")
    for r in results:
        for where, diff in r["survived"]:
            print(f"SURVIVED {where}")
            if args.diffs:
                print("\n".join("    " + ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")))
        by_reason: dict = {}
        for item, why in r["equivalent"]:
            by_reason.setdefault(why, set()).add(item.mutations[0].start_pos[0])
        for why, lines in by_reason.items():
            n = sum(1 for _, w in r["equivalent"] if w == why)
            print(f"EQUIVALENT {r['module']}: {n} mutants on lines {','.join(map(str, sorted(lines)))}: {why}")
    if args.ci:
        print(f"\nCI sample kill rate {total_rate:.1%} (minimum {args.min_rate:.0%})")
        return 0 if total_rate >= args.min_rate and not any(r.get("red") for r in results) else 1
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
