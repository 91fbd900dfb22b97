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
_SRC = [ROOT]  # where the modules are read from: the scratch copy once it exists (main)

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
                         "tests/test_moe_folding.py", "tests/test_moe_overlap.py", "tests/test_spine.py",
                         "tests/test_torchtitan.py", "tests/test_mtp.py"],
    "simulator/memory.py": ["tests/test_pin_memory.py", "tests/test_spine.py", "tests/test_moe_folding.py",
                            "tests/test_uneven_pipeline.py", "tests/test_torchtitan.py", "tests/test_act_offload.py",
                            "tests/test_mtp.py", "tests/test_published.py"],
    "simulator/analytic.py": ["tests/test_pin_analytic.py", "tests/test_spine.py", "tests/test_fsdp.py",
                              "tests/test_moe_overlap.py", "tests/test_moe_folding.py", "tests/test_torchtitan.py",
                              "tests/test_act_offload.py", "tests/test_mtp.py", "tests/test_published.py"],
    "simulator/des.py": ["tests/test_pin_des.py", "tests/test_des.py", "tests/test_spine.py",
                         "tests/test_uneven_pipeline.py"],
    "simulator/serving/scheduler.py": ["tests/test_pin_scheduler.py", "tests/test_serving_policies.py",
                                       "tests/test_serving.py"],
    "simulator/serving/engine.py": ["tests/test_pin_engine.py", "tests/test_pin_scheduler.py",
                                    "tests/test_attention_dp.py", "tests/test_frontend.py", "tests/test_serving.py",
                                    "tests/test_recv_interval.py"],
    "simulator/serving/costs.py": ["tests/test_pin_costs.py", "tests/test_layer.py", "tests/test_attention_dp.py",
                                   "tests/test_offline_fidelity.py", "tests/test_gpt_oss.py",
                                   "tests/test_linear_attention.py", "tests/test_serving.py"],
    "simulator/serving/kv_cache.py": ["tests/test_pin_kv_cache.py", "tests/test_pin_scheduler.py",
                                      "tests/test_offline_fidelity.py", "tests/test_linear_attention.py",
                                      "tests/test_serving.py"],
    "simulator/linear_attention.py": ["tests/test_linear_attention.py"],
    "simulator/serving/policies.py": ["tests/test_pin_policies.py", "tests/test_serving_policies.py",
                                      "tests/test_recv_interval.py"],
    "simulator/serving/frontend.py": ["tests/test_pin_frontend.py", "tests/test_frontend.py"],
    "planner/ilp.py": ["tests/test_pin_ilp.py",
                       "tests/test_invariants.py::test_time_limited_ilp_with_an_incumbent_is_not_called_optimal",
                       "tests/test_invariants.py::test_time_limited_ilp_without_a_solution_is_not_called_infeasible",
                       "tests/test_planner.py"],
}
# Packages and files copied to the scratch directory (the code under test and its data).
COPY = ["hwmodels", "simulator", "planner", "validation", "ui", "tests", "pyproject.toml"]
# The CI sample: a few mutants of each module, fixed by the seed (it follows the code, so it
# changes only when the modules change).
CI_SAMPLE, CI_SEED = 4, 20250101
# Equivalent mutants, excluded from the kill rate: (module, operator, where, reason). A mutant
# whose behaviour equals the original's is not a missing test. Text anchors follow the code; the
# runner warns about an entry that no longer matches any mutant (`--equivalents` lists them).
EQUIVALENT: list[tuple[str, str, int | str | tuple[int | str, int], str]] = [
    # (module, operator name or a part of it, where, reason); where = a line number, or a piece of
    # the line's text (preferred: it follows the code when lines above move), optionally with the
    # column: (line or text, column)
    ("simulator/serving/scheduler.py", "ReplaceComparisonOperator_LtE_Eq", ("if budget <= 0 or pbudget <= 0:", 38),
     "pbudget >= 0 in the running-prefill loop (every chunk there is <= pbudget): <= 0 is == 0"),
    *[("simulator/serving/scheduler.py", op, ("if chunk <= 0 or (not cfg.chunked_prefill and req.computed + chunk < req.target):", col),
       "with chunked prefill off a prompt is admitted whole and finishes its prefill in that pass, "
       "so no running prefill reaches this clause (it needs chunked_prefill False)")
      for op, col in (("ReplaceBinaryOperator_Add_", 75), ("ReplaceComparisonOperator_Lt_", 83))],
    *[("simulator/serving/scheduler.py", op, "if per_cycle == 0:",
       "per_cycle = n_dec >= 1 here (n_dec == 0 returned above): == 0, < 0, <= 0, is 0 all False")
      for op in ("ReplaceComparisonOperator_Eq_Lt", "ReplaceComparisonOperator_Eq_LtE",
                 "ReplaceComparisonOperator_Eq_Is")],
    ("simulator/serving/scheduler.py", "ReplaceBinaryOperator_Add_", "req.computed = l0 + done",
     "req.computed after leaving the decode set: preemption resets it to 0 right after, and a "
     "finished request's is never read"),
    ("simulator/serving/scheduler.py", "ReplaceComparisonOperator_GtE_Eq", "if req.generated >= req.output_len or req.prefill_only:",
     "output lengths are >= 1 (workload rejects < 1) and generated grows by one from below: "
     ">= is =="),
    *[("hwmodels/collectives.py", op, line,
       "the `or 10**9` / `or 1e9` fallback: nvls_min_ranks is None exactly when the tier has no "
       "NVLS line, so an NVLS line never meets it")
      for line in ("(nvls_min or 1e9)", "(nvls_min_ranks(cluster) or 10 ** 9)")
      for op in ("ReplaceBinaryOperator_Pow_", "NumberReplacer")],
    ("hwmodels/collectives.py", "NumberReplacer", 'hops = sum(d["spacing"] for d in dims) or 1',
     "a 2-rank torus group spans at least one axis: the sum of spacings is >= 1, `or 1` unused"),
    ("hwmodels/topology.py", "ReplaceComparisonOperator_Eq_LtE", "if src.size == 0:", "an array size is never < 0"),
    *[("hwmodels/topology.py", op, ("span = int(on_first.max() - on_first.min()) + 1", 30),
       "on_first.min() is 0: the first group starts at rank 0, local device 0 of its node (both "
       "placements move whole nodes), and x - 0 == x ^ 0 == x | 0 == x + 0")
      for op in ("ReplaceBinaryOperator_Sub_BitXor", "ReplaceBinaryOperator_Sub_BitOr",
                 "ReplaceBinaryOperator_Sub_Add")],
    *[("hwmodels/topology.py", op, "if k <= 1:",
       "_intra with k = 1 (one member per node): its tier and fraction are read only for groups "
       "with k > 1 (collectives: single-node n >= 2, multi-node `if k > 1`, hierarchical k > 1)")
      for op in ("ReplaceComparisonOperator_LtE_Lt", "ReplaceComparisonOperator_LtE_Eq")],
    ("hwmodels/topology.py", "ReplaceUnaryOperator_USub_Invert", "key = (z / x, -x)",
     "torus_shape's tie-break: ~x = -x - 1 orders the candidates as -x does"),
    *[("hwmodels/topology.py", op, ("while bit < m and not bit & r:", 14),
       "_btree_parent(r, m) has 0 < r < m: r's lowest set bit is below m and ends the loop first, "
       "so `bit < m` never decides it (<=, !=, `is not` agree)")
      for op in ("ReplaceComparisonOperator_Lt_IsNot", "ReplaceComparisonOperator_Lt_NotEq",
                 "ReplaceComparisonOperator_Lt_LtE")],
    *[("hwmodels/collectives.py", op, 'link = pl.torus.get("link_bytes_per_s", tier.bytes_per_s / 6)',
       "the default of torus link bandwidth: place_group fills pl.torus (with link_bytes_per_s, "
       "topology._torus_group) for every ici-torus cluster, the only one reaching _torus_lines")
      for op in ("ReplaceBinaryOperator_Div_", "NumberReplacer")],
    ("hwmodels/collectives.py", "ReplaceFalseWithTrue",
     'return Line("hierarchical", proto, BASE_LATENCY["ring"][proto] + net_lat, net_pb, where, auto=False)',
     "one GPU per node: this hierarchical line equals the ring line (latency and per-byte cost) "
     "and comes after it, so the tuner's min() keeps the ring either way"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_Gt_GtE", "passive &= x > 1e-15",
     "_nnls's activity threshold: only a solution entry of exactly 1e-15 tells > from >="),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_GtE_Gt", ("eligible = np.array([[a != \"nvls\" or x >=", 47),
     "the pinned aiconfigurator-core 0.12.0 NCCL tables measure 2, 4, 8 (GB200/GB300: 2, 4) GPUs "
     "and NVLS starts at 5 or 6: no point sits on the threshold"),
    ("hwmodels/collectives.py", "ReplaceContinueWithBreak", 516,
     "_single_node_lines: the NVLS fit is always the last of _Intra.fits (_intra appends "
     "_nvls_fit after the ring lines), so `break` after it skips nothing"),
    ("hwmodels/collectives.py", "NumberReplacer", (346, 61),
     "step_s of a fitted NVLS line: NVLS lines take base_s only (one in-switch step at any group "
     "size), step_s is never read for them"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Eq_LtE", "if hi == lo:",
     "_grid(T) gives lo <= hi: hi <= lo holds exactly when hi == lo"),
    ("simulator/serving/costs.py", "ReplaceBinaryOperator_Sub_Mod", "return a if hi == lo else a + (b - a) * (T - lo) / (hi - lo)",
     "_grid(T) puts lo <= T < hi <= lo + lo/16 (16 points per octave, exact below 32), so 0 <= T - lo < lo "
     "and T % lo == T - lo"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_LtE_Eq", "if T <= 0:",
     "T = a batch's token count (dense_s, _split_interp's t_max and ceil(t_sum / (tp·dp))), never "
     "negative: <= 0 is == 0"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_LtE_Lt", "if T <= 0:",
     "T = 0 through the grid: _grid(0) = (0, 0) and a pass of 0 tokens costs 0 (no GEMM rows, "
     "0-byte collectives): the early return saves work, not a different result"),
    *[("simulator/des.py", "ReplaceComparisonOperator_Lt_NotEq", where,
       "factor < inf and factor != inf differ only above inf (no float is); nan already fails 1 <= factor")
      for where in (("or not 1 <= factor < math.inf:", 48), ("        if not 1 <= factor < math.inf:", 27))],
    *[("simulator/des.py", op, where,
       "a pass kind is only ever \"F\" or \"B\" (every schedule's order; W passes are run "
       "apart): kind >= \"F\" is kind == \"F\" and kind <= \"B\" is kind == \"B\"")
      for op, where in (("ReplaceComparisonOperator_Eq_GtE", 'if kind == "F":'),
                        ("ReplaceComparisonOperator_Eq_GtE", ('needs_input = (kind == "F" and vs > 0)', 32)),
                        ("ReplaceComparisonOperator_Eq_LtE", ('needs_input = (kind == "F" and vs > 0)', 60)),
                        ("ReplaceComparisonOperator_Eq_LtE", 'for kind, j, mb in order if kind == "B"}'),
                        ("ReplaceComparisonOperator_Eq_LtE", 'room = kind == "B" or'))],
    ("simulator/des.py", "NumberReplacer", "self.links, self.done, self.version, self.finished = links, done, 0, False",
     "a flow's first version number: it is only compared with versions captured from the same "
     "flow after _rerate increments it, so any start value orders them alike"),
    *[("hwmodels/topology.py", op, ("for x in range(1, round(n ** (1 / 3)) + 2):", col),
       "torus_shape's search bound: x <= y <= z with x·y·z = n forces x <= cbrt(n) <= round(cbrt(n)) "
       "(float error < 0.5), and a larger x has no y (range(x, isqrt(n // x) + 1) is empty), so any "
       "bound from round(cbrt(n)) + 1 up (n ** 1 + 2, + 1, + 3) finds the same candidates")
      for op, col in (("ReplaceBinaryOperator_Div_Pow", 36), ("NumberReplacer", 44))],
    ("hwmodels/topology.py", "NumberReplacer", "nic_cap: float = 0.0  # bytes/s per NIC port",
     "Topology.nic_cap's default: read only by the switched-fabric code (fat_tree, dragonfly, "
     "_net_time, _a2a_time), reached only after build_topology sets it; ici-torus never reads it"),
    ("simulator/des.py", "NumberReplacer", ("started = a[1] if a[1] is not None else t0", 32),
     "the test a[1] -> a[0]: the line runs after `yield a[0]`, and only send() triggers a[0], having "
     "set a[1] = env.now first, so a[1] is not None there and a[0] (an event) is never None: both "
     "pick a[1] (the other variant, a[2], raises IndexError: killed, excluded with it)"),
    ("simulator/des.py", "NumberReplacer", ("in_flight = max(0.0, env.now - max(t0, started))", 28),
     "the clamp 0.0 -> -1.0: t0 and started (a[1], set when the send began, before a[0] "
     "triggered) are earlier readings of env.now, which never decreases, so env.now - max(t0, "
     "started) >= 0 and max(0.0, x) == max(-1.0, x) (the other variant, 1.0, adds 1 s per wait: "
     "killed, excluded with it)"),
    ("simulator/des.py", "ReplaceComparisonOperator_Lt_NotEq", "            if vs < last_chunk:",
     "chunk_ids(s, p, v) are model-chunk indices below model_chunks(p, v) (round-robin s + j·p < "
     "p·v; ZB-V s, 2p − 1 − s < 2p; DualPipe s, p − 1 − s < p), so vs <= last_chunk: != is <"),
    ("simulator/des.py", "ReplaceComparisonOperator_Eq_GtE", "last = mb == last_mb[j] and with_w",
     "with_w is True only for the schedules without a W split (1f1b, gpipe, interleaved), whose B "
     "passes of a local chunk come in increasing micro-batch order, so last_mb[j] is the largest "
     "and mb >= last_mb[j] only at it; with_w False makes `last` False either way"),
    ("simulator/des.py", "ReplaceComparisonOperator_Lt_NotEq", "room = kind == \"B\" or f_done - w_done < cap",
     "f_done - w_done <= cap always: it starts at 0 <= cap, an F runs only when it is < cap (then "
     "+1), and a W only lowers it: != cap is < cap"),
    ("simulator/des.py", "NumberReplacer", "_EPS = 1e-12",
     "des._EPS is read nowhere (no use in des.py, no import of it elsewhere): any value behaves alike"),
    ("simulator/des.py", "AddNot", "yield from compute(dur, c.bwd_comm_s if not zb else",
     "both branches pass the same communication times (the backward's dict or a copy of it), "
     "which compute() only reads"),
    ("hwmodels/topology.py", "ReplaceComparisonOperator_Lt_NotEq", "nxt = idx + step if c + 1 < L else",
     "c is a coordinate in 0..L-1, so c + 1 <= L: c + 1 != L is c + 1 < L"),
    ("hwmodels/topology.py", "ReplaceComparisonOperator_Gt_NotEq", "if leaving.max() > 0:",
     "leaving >= 0: on_rail counts the group's members on a rail, on_leaf_rail those of them on "
     "one leaf of it (a subset), so != 0 is > 0"),
    ("hwmodels/topology.py", "NumberReplacer", "pcie_up_cap: float = 0.0",
     "Topology.pcie_up_cap's default: nothing in the package reads it; build_topology sets it for "
     "PCIe nodes, the only ones it describes"),
    ("hwmodels/topology.py", "ReplaceComparisonOperator_Gt_NotEq", "if out_pod.max() > 0:",
     "out_pod >= 0: on_rail counts the group's members on a rail, on_pod_rail those of them in "
     "one pod (a subset), so != 0 is > 0"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_Eq_Is",
     'if op == "all_reduce" and nvls_min and not per_size',
     "calibrate's op runs over its own tuple of literals (\"all_reduce\", ..., \"all_to_all\"), the "
     "same interned objects as the literal it is compared with: `is` == `==`"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_Eq_Is",
     ('        algo = "pairwise" if op == "all_to_all" else "ring"', 32),
     "calibrate's op runs over its own tuple of literals (\"all_reduce\", ..., \"all_to_all\"), the "
     "same interned objects as the literal it is compared with: `is` == `==`"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_Eq_Is", 'protos = PROTOCOLS if link == "nvlink" else',
     "link is a value of _LINK_CLASS (literals \"nvlink\", \"pci\", \"net\") or the literal default "
     "\"net\": interned, `is` == `==`"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_Gt_NotEq", "if p is not None and p[-1] + (p[-2] if len(p) == 4 else 0) > 0:",
     "fitted parameters come from _nnls (x >= 0: entries leave the passive set at <= 1e-15 and are "
     "zeroed) or are copied between such fits by _order_protocols: the per-byte sum is >= 0, so "
     "!= 0 is > 0"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Gt_GtE", "if self.pp > 1:  # activations cross each stage boundary once",
     "the term added is (pp - 1)·send, 0 at pp = 1: >= 1 adds the same nothing"),
    ("simulator/analytic.py", "ReplaceComparisonOperator_Gt_GtE", "grad_exposed = np.where(grad > 0,",
     "at grad = 0 the bucket (grad × share) is 0 too: max(0 - last_bwd, 0) = 0, the other branch"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_LtE_Eq", "if rows <= 0:",
     "rows = a batch's sample count, never negative: <= 0 is == 0"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_LtE_Eq", "if n <= 0:",
     "n = a batch's decode count, never negative: <= 0 is == 0"),
    ("hwmodels/collectives.py", "NumberReplacer", "for ln in lines if ln.auto), default=0.0)",
     "collective_s: every group of > 1 rank has an auto line (ring/p2p/torus), so min() never "
     "falls back to its default"),
    ("hwmodels/topology.py", "NumberReplacer", ("covered, ti = 1, 0", 21),
     "_intra's initial tier index: k > 1 needs an intra-node tier, so the loop always sets it"),
    *[("simulator/ops.py", "ReplaceComparisonOperator_Eq_Is", line,
       "phase literals fwd/bwd/recompute are interned by CPython and the phase is always one of "
       "them: `is` == `==`")
      for line in ('if phase == "bwd":', ('if ph == "recompute" and plan.recompute', 14), 'if ph == "bwd":')],
    *[("hwmodels/kernels.py", op, ("if self._attn is not None and seq_q == seq_kv and causal:", 44),
       "every causal call has seq_q == seq_kv (ops.chunk_attention_s, legacy_flash_s, "
       "validation/compare.py); calls with other lengths are non-causal: >= and <= are ==")
      for op in ("ReplaceComparisonOperator_Eq_GtE", "ReplaceComparisonOperator_Eq_LtE")],
    *[("hwmodels/topology.py", op, "(nvl72_rack if span >= 72 else nvswitch_node)",
       "nvl72_rack builds exactly what nvswitch_node builds (one non-blocking NVSwitch domain)")
      for op in ("ReplaceComparisonOperator_GtE_", "NumberReplacer", "AddNot")],
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_NotEq_IsNot",
     'steps = ring_steps(op, n) if op != "broadcast" else n - 1',
     "ring_steps('broadcast', n) is n - 1 too: both branches agree for a broadcast, and `is not` "
     "picks the first branch for every other op"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_NotEq_IsNot",
     ('inter_steps = ring_steps(op, m) if op != "broadcast" else m - 1', 46),
     "ring_steps('broadcast', m) is m - 1 too: both branches agree for a broadcast, and `is not` "
     "picks the first branch for every other op"),
    *[("hwmodels/topology.py", op, ("if pc.any() and topo.levels >= 3:", 36),
       "pods exist only in 3-level fat trees (pod_of_leaf is all 0 otherwise, so pc is empty) and "
       "levels <= 3: <= 3 and == 3 agree with >= 3 whenever pc.any()")
      for op in ("ReplaceComparisonOperator_GtE_LtE", "ReplaceComparisonOperator_GtE_Eq")],
    ("hwmodels/topology.py", "NumberReplacer", "torus_link_cap: float = 0.0",
     "Topology.torus_link_cap's default: read only for ici-torus clusters, whose tpu_torus sets it"),
    ("hwmodels/kernels.py", "NumberReplacer", ("return 1e12 * float(np.interp(", 11),
     "1e12 ± 1 as the TFLOP/s -> FLOP/s factor: a 1e-12 relative change, below any tolerance "
     "and any printed digit"),
    ("hwmodels/kernels.py", "RemoveDecorator", "@cache",
     "memoisation of a pure table loader or of kernel_model's constructor: speed, not results"),
    ("simulator/serving/policies.py", "ReplaceComparisonOperator_Eq_Is",
     ('"MaxUtilization" if cfg.capacity_scheduler == "max_utilization"', 71),
     "capacity_scheduler is only ever set from the policies' literals (MaxUtilization.apply etc.; "
     "engine_config maps the option text to a policy): interned, `is` == `==`"),
    ("simulator/serving/frontend.py", "ReplaceComparisonOperator_Gt_GtE",
     "start = now if now > self.free_at else self.free_at",
     "when now == free_at both branches give the same start"),
    ("simulator/serving/policies.py", "ReplaceBinaryOperator_Div_FloorDiv", "gib = float(device.hbm_bytes or 0) / 2**30",
     "gib is only compared with whole numbers of GiB (70; 35, 160): x < n and floor(x) < n agree "
     "for integer n, as do x >= n and floor(x) >= n"),
    ("simulator/serving/frontend.py", "ReplaceComparisonOperator_Eq_LtE", 'p = "measured" if p == "on" else p',
     "p is on, measured or published here (off returned above): 'measured' <= 'on' maps measured "
     "to itself and 'published' > 'on', so <= is =="),
    ("planner/ilp.py", "ReplaceComparisonOperator_Eq_Is",
     "if start is not None and len(start) == C and sum(start) == L and min(start) >= 1:",
     "`is` can only turn a valid start into no start: CBC loses its warm-start hint, the problem "
     "and its optimum are the same (only a solve cut by the time limit could differ)"),
    *[("planner/ilp.py", op, ("span = {c: range(c + 1, L - C + c + 2) for c in range(C - 1)}", 60),
       "C ** 1, C + 1, C * 1, C // 1, C | 1, C ^ 1, C << 1 are all >= C - 1: span only gains keys "
       ">= C - 1 (the last chunk, whose end is L), which nothing reads (y, at(), pick and ends take "
       "c < C - 1): the same program")
      for op in ("ReplaceBinaryOperator_Sub_Pow", "ReplaceBinaryOperator_Sub_Add", "ReplaceBinaryOperator_Sub_Mul",
                 "ReplaceBinaryOperator_Sub_FloorDiv", "ReplaceBinaryOperator_Sub_BitOr",
                 "ReplaceBinaryOperator_Sub_BitXor", "ReplaceBinaryOperator_Sub_LShift")],
    *[("planner/ilp.py", op, ("for c in range(1, C - 1):", 24),
       "range(1, C) adds only order[C-1]: L - B_{C-2} >= 1, implied by pick[C-2] (B_{C-2} is in "
       "span[C-2], at most L - 1): the same feasible set and objective, so the same optimum (CBC "
       "may pick another of equal optima, which no caller can tell apart)")
      for op in ("ReplaceBinaryOperator_Sub_FloorDiv", "ReplaceBinaryOperator_Sub_Mul", "ReplaceBinaryOperator_Sub_Pow")],
    *[("planner/ilp.py", op, ("prob += r[o] <= (available[opt.group] // opt.devices) * u[o]", 46),
       "the big-M of used[o]: any M >= D/d (D/d, D*d, D**d, D+d, D<<d, D|d for D >= 0, d >= 1) "
       "gives the same integer solutions: u = 0 forces r = 0, and with u = 1 devices[g] already "
       "bounds d*r <= D, so r <= floor(D/d) <= M: the same feasible set and objective (CBC may pick "
       "another of equal optima)")
      for op in ("ReplaceBinaryOperator_FloorDiv_Div", "ReplaceBinaryOperator_FloorDiv_Mul",
                 "ReplaceBinaryOperator_FloorDiv_Pow", "ReplaceBinaryOperator_FloorDiv_Add",
                 "ReplaceBinaryOperator_FloorDiv_LShift", "ReplaceBinaryOperator_FloorDiv_BitOr")],
    ("planner/ilp.py", "ReplaceBinaryOperator_Add_Mod", ('upBound=L - C + 1, cat="Integer")', 78),
     "the text becomes L - C % 1 = L - 0 = L (% binds tighter than -): a looser bound that the "
     "other constraints already imply: every chunk c is in exactly one stage's sum (c mod p, "
     "C = p*v), the N_s add up to L and every other chunk holds >= 1 layer, so n_c <= L - (C - 1); "
     "a valid start has the same bound (sum L, min >= 1): the same feasible set and objective"),
    ("planner/ilp.py", "ReplaceComparisonOperator_Eq_GtE", "round(y[j, c].value() or 0) == 1",
     "read only when run.feasible, which requires _integral (every integer variable within 1e-6 of "
     "an integer); y[j, c] is Binary (bounds 0..1), so round(value or 0) is 0 or 1, where >= 1 is "
     "== 1: the same ends"),
    ("planner/ilp.py", "ReplaceComparisonOperator_Eq_LtE", 'plan.recompute == "full"',
     "partition_problem reaches these lines only with recompute in RECOMPUTE = none, selective, full "
     "(layer_time_s and step_costs take RECOMPUTE.index(plan.recompute) first, ValueError otherwise), "
     "and 'none' and 'selective' sort after 'full': <= is =="),
    ("simulator/ops.py", "ReplaceComparisonOperator_Eq_Is", "before_gemm == fwd",
     "before_gemm and fwd are both bools (True/False are singletons): `is` == `==`"),
    ("simulator/ops.py", "ReplaceComparisonOperator_NotEq_IsNot", 'phase != "bwd"',
     "phase literals fwd/bwd/recompute are interned by CPython and the phase is always one of "
     "them: `is not` == `!=`"),
    ("simulator/ops.py", "ReplaceTrueWithFalse", ("@dataclass(frozen=True, slots=True)", 30),
     "slots=False: same fields, frozen and equality, only a __dict__ more"),
    *[("simulator/ops.py", op, where, "the unfused softmax's 2 * 2 + 1 bytes: 4 ^ 1 == 4 | 1 == 4 + 1")
      for op in ("ReplaceBinaryOperator_Add_BitXor", "ReplaceBinaryOperator_Add_BitOr")
      for where in (('Op("attn.softmax", "compute", ph, 0.0, (2 * 2 + (2 * 2 + 1) * drop)', 67),
                    ("km.memory_s((2 * 2 + (2 * 2 + 1) * drop) * scores)", 43))],
    ("simulator/serving/scheduler.py", "NumberReplacer", "self.kd = 0  # decode iterations so far",
     "kd's start value: it is read only as kd - dec_k0 (dec_k0 = kd at joining) and as residues "
     "kd % bs against (dec_k0 - dec_l0) % bs, both unchanged by a shift of every kd"),
    ("simulator/serving/scheduler.py", "ReplaceBinaryOperator_Mul_", "req.shared_blocks += len(new) * per_key",
     "shared_blocks after the prefill completes: only a running prefill reads it (`have`), and "
     "_release zeroes it before the request can prefill again"),
    ("simulator/serving/scheduler.py", "ReplaceBinaryOperator_FloorDiv_RShift", "full = avail // per_cycle",
     "decode_run_length's whole-cycle shortcut: avail >> n <= avail // n, and the cycles it "
     "undercounts are then walked residue by residue to the same run length"),
    ("simulator/serving/scheduler.py", "ReplaceComparisonOperator_Gt_NotEq", "if done > 0:",
     "done = kd - dec_k0 >= 0 (kd only grows): != 0 is > 0"),
    *[("simulator/serving/scheduler.py", "NumberReplacer", line,
       "an EngineConfig default that every engine's policies set in engine_config (the only "
       "constructor outside tests): max_num_seqs, max_num_batched_tokens, block_size, memory_fraction")
      for line in ("max_num_seqs: int = 1024", "max_num_batched_tokens: int = 8192",
                   "block_size: int = 16", "memory_fraction: float = 0.9")],
    ("simulator/serving/scheduler.py", "ReplaceComparisonOperator_Lt_NotEq", "if not cfg.chunked_prefill and chunk < remaining:",
     "chunk = min(remaining, ...) <= remaining: != is <"),
    *[("simulator/serving/scheduler.py", op, ("1 < len(self.waiting) <= LPM_FALLBACK_QUEUE", 48),
       "1 < len(waiting) vs 1 != len: they differ only for an empty queue, whose sort is a no-op")
      for op in ("ReplaceComparisonOperator_Lt_IsNot", "ReplaceComparisonOperator_Lt_NotEq")],
    ("simulator/serving/scheduler.py", "NumberReplacer", "def decode_run_length(self, limit: int = 1 << 30)",
     "decode_run_length's default limit 2**30: the run already ends at the next finish, and no "
     "request owes 2**30 tokens (prompt + output must fit the KV pool)"),
    *[("simulator/serving/scheduler.py", op, line,
       "a waiting request either has computed 0 < target or arrived with its KV, when engine.py "
       "sets `req.computed = req.target = req.prompt_len` (one int object): ==, >=, `is` agree")
      for op, line in (("ReplaceComparisonOperator_GtE_Is", "if req.computed >= req.target:"),
                       ("ReplaceComparisonOperator_GtE_Eq", "if req.computed >= req.target:"),
                       ("ReplaceComparisonOperator_Lt_IsNot", "if decode_only and req.computed < req.target:"),
                       ("ReplaceComparisonOperator_Lt_NotEq", "if decode_only and req.computed < req.target:"))],
    *[("simulator/serving/scheduler.py", op, "if req.computed == 0 and req.prefix_keys and kv.prefix_caching:",
       "a waiting prompt has computed == 0 (preemption resets it; KV-arrived requests are "
       "admitted above): >= 0 / <= 0 agree with == 0")
      for op in ("ReplaceComparisonOperator_Eq_GtE", "ReplaceComparisonOperator_Eq_LtE")],
    ("simulator/serving/engine.py", "ReplaceComparisonOperator_Eq_LtE",
     'if k == "chunk" and v.lower() in ("off", "none", "false"):',
     "k is one of PLAN_KEYS here (checked just above) and none sorts below \"chunk\" (tp, pp, ep, "
     "replicas, max_*, prefill_*, decode_*): k <= \"chunk\" only for k == \"chunk\""),
    ("simulator/serving/engine.py", "ReplaceComparisonOperator_Lt_LtE",
     "if not same_node and cluster.num_nodes < 2:",
     "at num_nodes == 2 the mutant's with_nodes(2) returns an equal Cluster (its last tier's size is "
     "num_nodes: clusters._parse_tiers and with_nodes both set it), so the transfer costs the same"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Gt_NotEq", "if self.dp > 1:  # one rank's batch, the others padded to it",
     "dp >= 1 (IterationCost.__init__ raises InputError for dp < 1): != 1 is > 1"),
    ("simulator/serving/costs.py", "NumberReplacer", "KV read at {self.km.mem_bytes_per_s / 1e12:.2f} TB/s",
     "1e12 ± 1 in a note printed with 2 decimals: a 1e-12 relative change, which alters the text of "
     "none of the 73 catalogue device/dtype kernel models (checked: all print the same digits)"),
    ("simulator/serving/costs.py", "NumberReplacer", "rows = max((b.samples for b in batches), default=0)",
     "the default is read only for an empty list, which no caller passes (DPReplica.run hands "
     "iteration_dp_s one batch per rank, dp >= 2; nothing else calls it): default 1 or -1 alike"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Eq_Is", 'if group == "tp" and op == "all_reduce":',
     "group and op are always literals of simulator/ops.py's _comm calls (\"tp\", \"cp\", \"ep\"; "
     "\"all_reduce\", \"all_gather\", ...): CPython interns identifier-like string constants, so `is` == `==`"),
    ("simulator/analytic.py", "ReplaceComparisonOperator_Gt_GtE", 495,
     "the bubble's `if p > 1` (the line before `for s in np.unique(b.schedule)`; the p2p one further "
     "down is not equivalent): at p = 1 every schedule's bubble_s has the factor p - 1 = 0 "
     "(1f1b, interleaved, zb-h1/h2, zb-v), and dualpipe, whose factor is p // 2 - 1, is refused "
     "below pp = 2 (schedules.DualPipe: an even pp >= 2), so the bubble stays 0"),
    *[("hwmodels/collectives.py", op,
       "u = math.exp((1 - w) * math.log(a.u) + w * math.log(b.u)) if a.u > 0 and b.u > 0 else max(a.u, b.u)",
       "_fits_at reads only per-size (PCIe) calibrations, whose lines calibrate() keeps only when "
       "x[1] > 0 (`np.sum(x[1:]) <= 0` skips the rest), so u = x[1]·ref > 0: `> 0`, `>= 0`, `!= 0` "
       "and `is not 0` are all True")
      for op in ("ReplaceComparisonOperator_Gt_NotEq", "ReplaceComparisonOperator_Gt_GtE",
                 "ReplaceComparisonOperator_Gt_IsNot")],
    ("hwmodels/collectives.py", "NumberReplacer", "eff = BUS_EFFICIENCY.get(tier.kind, 0.8)",
     "BUS_EFFICIENCY has an entry for every one of clusters.TIER_KINDS, and _parse_tiers refuses "
     "any other kind: the default is never read"),
    ("hwmodels/collectives.py", "ReplaceComparisonOperator_Gt_NotEq",
     "intra = _intra(cluster, op, n, k, pl.intra_tier, pl.intra_fraction) if k > 1 else None",
     "k = the group's members per node it spans, >= 1 for any group: != 1 is > 1"),
    *[("hwmodels/collectives.py", "NumberReplacer", (line, col),
       "HW_LATENCY's NVLink and PCI tree latencies (NCCL's table, transcribed whole): only "
       "HW_LATENCY[link][\"ring\"] is read for NVLink/PCI (_default_fits, _fits_at); trees are "
       "costed from HW_LATENCY[\"net\"] (_net_step) and the intra-node chain from the ring fit")
      for line, cols in (('"nvlink": {"ring": {"LL": 0.6, "LL128": 1.9, "Simple": 3.4}, "tree":', (80, 94, 110)),
                         ('"pci": {"ring": {"LL": 1.0, "LL128": 2.5, "Simple": 5.7}, "tree":', (77, 91, 106)))
      for col in cols],
    ("hwmodels/collectives.py", "ReplaceBinaryOperator_Div_Pow",
     "w = (math.log2(n) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))",
     "_fits_at interpolates only per-size (PCIe) calibrations; the one PCIe table shipped "
     "(rtx_pro_6000_server) measures 2, 4 and 8 GPUs, so neighbours are one octave apart, the "
     "denominator is 1 and x / 1 == x ** 1"),
    # NCCL-fit internals whose mutants give bit-identical calibrations: calibrate() runs only on
    # the NCCL tables of the pinned aiconfigurator-core 0.12.0 (profiles.load_nccl_table); each
    # was checked by fitting all 8 catalogue calibrations with the mutant (repr of every ProtoFit
    # equal). They are equivalent for that data, not for any table: re-check on a data upgrade.
    ("hwmodels/collectives.py", "ReplaceBinaryOperator_Mul_Mod", "free = ~passive & (grad > 1e-12 * max(1.0,",
     "NNLS free-variable tolerance 1e-12·max(1, |Atb|) vs 1e-12: same fits on every shipped table"),
    ("hwmodels/collectives.py", "ReplaceBinaryOperator_Mul_BitOr", "for _ in range(3 * m):",
     "NNLS outer-iteration cap 3m vs 3|m (3 or 7 for m = 2 or 4 columns): every shipped table's fits "
     "converge within the smaller cap, bit-identical"),
    ("hwmodels/collectives.py", "ReplaceBinaryOperator_Mul_Mod", "x = x + alpha * (z - x)",
     "NNLS interpolation step toward the feasible point: every shipped table's fits are reached "
     "without this backtracking step mattering, bit-identical"),
    ("hwmodels/collectives.py", "NumberReplacer", ("cols = slice(2, 4) if with_steps else slice(1, 2)", 28),
     "the end of the copied per-byte columns: slice(2, 5) of a 4-parameter fit is slice(2, 4); "
     "slice(2, 3) (u without v) gives bit-identical fits on every shipped table"),
    ("hwmodels/collectives.py", "ExceptionReplacer", "except np.linalg.LinAlgError:",
     "the lstsq fallback of _nnls: np.linalg.solve never raises on the normal equations of any "
     "shipped table (the mutant, which would let a LinAlgError escape, fits all 8 catalogue "
     "calibrations, and every pin over them passes)"),
    ("hwmodels/collectives.py", "NumberReplacer", "algo = cands[0][0]",
     "_order_protocols with cands[-1] (the NVLS candidate for all-reduce on NVLS tiers, else the same "
     "algorithm): the shipped tables' all-reduce fits already keep the protocol order, bit-identical"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Eq_LtE",
     "return nvlink or kind in FULLY_CONNECTED_NON_NVLINK or tp == 2",
     "custom_allreduce_eligible returns False for tp < 2 at its top: here tp >= 2, so <= 2 is == 2"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Eq_GtE", ('if group == "tp" and op == "all_reduce":', 17),
     "group is one of simulator/ops.py's literals \"tp\", \"cp\", \"ep\": only \"tp\" sorts >= \"tp\""),
    ("simulator/serving/costs.py", "NumberReplacer",
     ("self._decode_scale = (src.hbm_bytes_per_s or 1) / (dev.hbm_bytes_per_s or 1)", 86),
     "the `or 1` after dev.hbm_bytes_per_s: kernel_model(dev) runs first in __init__ and raises "
     "InputError for a device without HBM bandwidth, so it is always truthy here"),
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_Eq_LtE", "return a if hi == lo else a + (b - a) *",
     "_grid(x) gives lo <= hi (lm_head_s, _split_interp): hi <= lo holds exactly when hi == lo"),
    *[("simulator/serving/costs.py", "ReplaceComparisonOperator_Eq_Is", where,
       "_grid(x) returns (x, x), one int object, on an exact point and two different values "
       "otherwise: `hi is lo` is `hi == lo`")
      for where in ("if hi == lo:", "return a if hi == lo else a + (b - a) *")],
    ("simulator/serving/costs.py", "ReplaceComparisonOperator_NotEq_IsNot", "if nhi != nlo:",
     "_grid(n) returns (n, n), one int object, on an exact point and two different values "
     "otherwise: `nhi is not nlo` is `nhi != nlo`"),
    ("simulator/memory.py", "ReplaceComparisonOperator_Eq_LtE", 'if plan.recompute == "full":',
     "plan.recompute is one of RECOMPUTE (parse_plan and validate_plan refuse others, PlanBatch.of "
     "indexes RECOMPUTE, layer_plan gets RECOMPUTE[rc]): 'none' and 'selective' sort after 'full', "
     "so <= 'full' holds exactly for 'full'"),
    ("simulator/memory.py", "NumberReplacer", ("recomputed_layers(pl, -1, 0) for pl in pls", 52),
     "recomputed_layers with n = -1: _recomputed_layers returns at `if n < 0` before reading the "
     "method, so 0 -> 1 or -1 only keys another _RECOMPUTED entry holding the same array"),
    ("simulator/memory.py", "ReplaceComparisonOperator_Eq_", ("hybrid_activation_bytes(model, job, plan, k == MOE, k) for k, n in counts", 67),
     "hybrid_activation_bytes with a kind k (a hybrid_pattern symbol, never empty) reads `moe` only in "
     "its `if not kind` branch, so any value of k == MOE gives the same bytes"),
    ("simulator/memory.py", "ReplaceComparisonOperator_Eq_GtE", "if kind == MAMBA:",
     "kind is a hybrid_pattern symbol (M * - E, models.py refuses others) or MOE: of these only 'M' "
     "is >= 'M' ('*', '-', 'E' sort before it)"),
    ("simulator/serving/engine.py", "ReplaceComparisonOperator_Gt_GtE", "            if g.dp > 1:",
     "> 1 and >= 1 differ only at dp == 1, where dp_engine_config returns its cfg unchanged "
     "(`if cfg.engine != \"sglang\" or dp <= 1: return cfg`)"),
    ("simulator/serving/policies.py", "ReplaceComparisonOperator_Eq_Is", 'if key == "',
     "every engine's option(key, value): its one caller, engine_config, passes key from `for key in "
     "ENGINE_OPTIONS` (policies.py's tuple of identifier-like literals, interned by CPython like the "
     "literal it is compared with): `is` == `==`"),
    ("simulator/serving/engine.py", "ReplaceComparisonOperator_GtE_Is", "if req.generated >= req.output_len:  # one-token",
     "transfer_kv gets a prefill-only request at its first token: generated is 1 (0 += 1, CPython's "
     "cached small int), output_len a Python int >= 1 (RequestSource int(), trace rows through "
     "workload._length's int(); both >= 1): 1 >= o iff o == 1 iff o is the cached 1"),
    ("simulator/serving/engine.py", "NumberReplacer", "mean = sum(f.delay_sum_s for f in fronts) / n if n else 0.0",
     "n >= 1 whenever fronts is non-empty: plan.frontend gives every both/prefill replica a Frontend, "
     "so every arrival (not decode-only) passes Frontend.intake (intakes += 1), and one arrives at "
     "least (ServingWorkload refuses num_requests < 1; open loop issues them all, closed loop "
     "min(concurrency, num_requests) >= 1 at start; env.run() drains every event): 0.0 never read"),
    ("simulator/serving/engine.py", "ReplaceComparisonOperator_Gt_GtE", ("while j > 0 and ends(j) > elapsed + 1e-12:", 32),
     "_steps_within's one caller (_decode_run) passes elapsed = env.now - start >= 0, cap <= the run's "
     "steps and d0 = dt >= 0, d0 + slope·(steps-1) = dt_last >= 0 (pass costs), so ends() is "
     "non-decreasing on [0, cap] and {j: ends(j) <= E} is a prefix holding 0 (ends(0) = 0 < E): "
     "either first loop stops in it, and the second loop climbs from any member to its largest"),
    ("simulator/serving/policies.py", "NumberReplacer", ("gib = float(device.hbm_bytes or 0) / 2**30", 40),
     "the `or 0` for a device without an HBM size: gib is then 0 or ±2**-30 (`or 1`, `or -1`), "
     "compared only with 70 (vLLM) or 35 and 160 (SGLang): below each threshold either way"),
    ("simulator/serving/policies.py", "ReplaceComparisonOperator_Gt_NotEq", "if cfg.batch_wait_iters > 0:",
     "batch_wait_iters >= 0 in every config: engine_config (the only constructor outside tests) "
     "refuses < 0 from the field and from the option; engine.py's replace() never sets it: != 0 is > 0"),
    ("simulator/ops.py", "ReplaceBinaryOperator_FloorDiv_Div", 'ops.append(_mem(km, "attn_out_copy"',
     "attn_out_dim = num_heads·d_v and tp divides num_heads (validate_plan, which estimate and so "
     "simulate run; the planner prunes with tp_splits_model): attn_out_dim / t is the exact integer "
     "attn_out_dim // t as a float, and the float product is bit-identical"),
    ("simulator/analytic.py", "ReplaceComparisonOperator_Eq_GtE", 'full = (b.recompute == RECOMPUTE.index("full"))',
     "PlanBatch.recompute holds indices into RECOMPUTE = (none, selective, full) and full is the "
     "largest, 2: >= 2 is == 2"),
    *[("simulator/analytic.py", op, ("units = [(k, x) for k, x in units if k > 0 and x > 0]", 47),
       "the unit counts k are never negative (pl.n_layers, first + last, `n_moe or 1.0`, LoRA's 1.0), "
       "and a k = 0 unit adds k·c(...) = 0 to both sums: keeping it (>= 0) or not (!= 0 is > 0) "
       "gives the same seconds")
      for op in ("ReplaceComparisonOperator_Gt_NotEq", "ReplaceComparisonOperator_Gt_GtE")],
    ("simulator/analytic.py", "ReplaceComparisonOperator_Gt_NotEq", "grad_exposed = np.where(grad > 0,",
     "grad is a sum of collective seconds (_dp_terms: collective_s, plus copy times with rank_copies), "
     "never negative: != 0 is > 0"),
    ("simulator/analytic.py", "ReplaceComparisonOperator_Eq_GtE", ('(b.schedule == names.index("dualpipe"))', 61),
     "PlanBatch.schedule holds indices into schedules.names() and dualpipe is its last entry: "
     ">= is =="),
    ("simulator/analytic.py", "ReplaceComparisonOperator_Eq_GtE", "sel = b.schedule == s",
     "the loop runs over np.unique(b.schedule), ascending: rows of a later schedule written with "
     "s's closed form (pure NumPy, v >= 1: no error, no warning) are overwritten when their own s "
     "comes, and a row of s is never selected again, so every row keeps its own schedule's bubble"),
    ("simulator/analytic.py", "ReplaceComparisonOperator_Gt_NotEq", "if p > 1:",
     "p = pp >= 1 (parse_plan refuses pp < 1; validate_plan needs dp·tp·pp·cp = devices): "
     "!= 1 is > 1"),
    ("simulator/analytic.py", "ReplaceUnaryOperator_USub_Invert",
     ('mtp_rc = plan.recompute != "full" or bool(mtp_recomputed(plan.recompute, -1 if plan.recompute_layers is None', 81),
     "mtp_recomputed reads recompute_layers only as `< 0` (memory.mtp_recomputed): ~1 = -2 and -1 "
     "are both < 0"),
]
# Cache sizes: every mutant of an `lru_cache(maxsize=...)` argument that still yields an int (or
# a negative one, which lru_cache treats as 0) changes how much is cached, never a result. `/`
# (a float maxsize is a TypeError) is left in: it is killed.
_CACHE_SIZE_OPS = ("NumberReplacer",) + tuple(
    f"ReplaceBinaryOperator_LShift_{o}" for o in ("Add", "Sub", "Mul", "FloorDiv", "Mod", "Pow", "RShift",
                                                  "BitOr", "BitAnd", "BitXor"))
_CACHE_SIZE_LINES = [(mod, "lru_cache(maxsize=") for mod in (
    "hwmodels/kernels.py", "hwmodels/collectives.py", "hwmodels/topology.py", "simulator/serving/costs.py",
    "simulator/ops.py", "simulator/memory.py")]
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
    tree = ast.parse((_SRC[0] / module).read_text())
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
    for entry in EQUIVALENT:
        if entry[0] == module and _entry_matches(entry, m):
            return entry[3]
    pos = tuple(m.start_pos)
    if any(a <= pos < b for a, b in _annotation_spans(module)):
        return "inside an annotation (postponed evaluation: never evaluated)"
    return None


@functools.cache
def _lines_with(module: str, text: str) -> frozenset:
    """Numbers of the lines of `module` that contain `text` (an EQUIVALENT anchor)."""
    return frozenset(i for i, ln in enumerate((_SRC[0] / module).read_text().splitlines(), 1) if text in ln)


def _entry_matches(entry, m) -> bool:
    """Whether EQUIVALENT `entry` names mutant `m`. Its place is a line number, a (line, column)
    pair, a piece of the line's text (every line containing it), or (text, column): text anchors
    follow the code when edits above move it."""
    module, op, where, _ = entry
    if not (m.operator_name.endswith(op) or (op.endswith("_") and op in m.operator_name)):
        return False
    line, col = where if isinstance(where, tuple) else (where, None)
    lines = _lines_with(module, line) if isinstance(line, str) else (line,)
    return m.start_pos[0] in lines and (col is None or m.start_pos[1] == col)


def _stale_entries(module: str, items) -> list:
    """EQUIVALENT / cache-size entries of `module` that name no mutant cosmic-ray enumerated: the
    code moved under them (they would silently exclude whatever lands on that line next)."""
    muts = [it.mutations[0] for it in items]
    groups: dict = {}  # (line, reason) -> its entries: one line's operators may be listed wholesale
    for entry in EQUIVALENT:
        if entry[0] == module:
            groups.setdefault((entry[2], entry[3]), []).append(entry)
    return [(f"line {line}", why[:60]) for (line, why), entries in groups.items()
            if not any(_entry_matches(e, m) for e in entries for m in muts)]


def list_equivalents(module: str, work: Path, env: dict) -> int:
    """Print every mutant of `module` that EQUIVALENT excludes (with its source line) and every
    stale entry; run nothing. Returns the number of stale entries."""
    from cosmic_ray.work_db import WorkDB, use_db
    tag = module.replace("/", "_")
    cfg, db = work / f"{tag}.toml", work / f"{tag}.sqlite"
    cfg.write_text(_config(module, ["tests"], 10))
    db.unlink(missing_ok=True)
    subprocess.run(_cosmic_ray() + ["init", str(cfg), str(db)], cwd=work, env=env, check=True)
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        items = list(wdb.work_items)
    src = (work / module).read_text().splitlines()
    notes = 0
    for it in items:
        why = _is_equivalent(module, it)
        if why and why.startswith("inside an annotation"):
            notes += 1
        elif why:
            m = it.mutations[0]
            print(f"{module}:{m.start_pos[0]}:{m.start_pos[1]} {m.operator_name.split('/')[-1]:<40} "
                  f"{src[m.start_pos[0] - 1].strip()[:60]}")
    print(f"{module}: and {notes} mutants inside annotations")
    stale = _stale_entries(module, items)
    for entry in stale:
        print(f"STALE {module}: EQUIVALENT entry {entry} matches no mutant")
    return len(stale)


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
        for entry in _stale_entries(module, items):
            print(f"WARNING {module}: EQUIVALENT entry {entry} matches no mutant: the line moved? "
                  f"(re-check it: a stale entry can exclude a mutant that is not equivalent)", flush=True)
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
    ap.add_argument("--equivalents", action="store_true",
                    help="list the mutants EQUIVALENT excludes and its stale entries, run nothing")
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
    _SRC[0] = work  # what cosmic-ray enumerates: EQUIVALENT text anchors are looked up there
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    check = subprocess.run([sys.executable, "-c", "import simulator; print(simulator.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not check.startswith(str(work)):
        sys.exit(f"the copy is not what Python imports ({check}); refusing to mutate")
    if args.equivalents:
        try:
            return 1 if sum(list_equivalents(m, work, env) for m in modules) else 0
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
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
