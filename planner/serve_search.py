"""Cost-optimal serving fleets (`clusterplan plan serve`; docs/design.md §4, docs/modeling.md §5.3
"Serving fleets"; issue #7).

Three steps, each usable on its own:

1. `replica_capacity`: per configuration c = (device type, tp), the highest open-loop request rate
   r_c one replica sustains with the SLO percentile of TTFT and TPOT within the SLOs. Bisection on
   the rate; every probe is a seeded serving DES run (`simulator.serving.engine.simulate`) of a
   few hundred requests drawn from the workload's length distributions. Results are cached.
2. `fleet_ilp`: Mélange-style bin packing (Griggs et al., arXiv 2404.14527), aggregated version —
   integer replicas n_c ≥ 0 of every configuration,

       minimise    Σ_c n_c · tp_c · price(device_c)                       ($/h)
       subject to  Σ_c n_c · r_c ≥ R                                      [capacity]
                   Σ_{c: device_c = t} n_c · tp_c ≤ available_t  ∀ t      [devices_t]

   solved with CBC under a time limit and relative gap (status checked as in planner.ilp).
   `fleet_brute_force` enumerates the same program for small instances (tests compare the two).
3. `verify_fleet`: the chosen fleet (replicas of mixed device types behind a least-outstanding
   router) simulated end to end at the full rate; when it misses an SLO, the ILP is re-solved
   with more required capacity (the next replica) and the miss is reported in the notes.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace

import pulp

from hwmodels.errors import InputError
from simulator.regimes import serving_fleet_validation

DEFAULT_TIME_LIMIT_S = 5.0
DEFAULT_GAP = 0.0
TPS = (1, 2, 4, 8)
PERCENTILES = {50: "p50", 90: "p90", 99: "p99"}
_CAPACITY_CACHE: dict = {}
MAX_PROBE_REQUESTS = 20_000
FLOOR_RATE = 1e-3  # req/s of the floor probe: every request alone
ITERATIONS, REL_TOL = 7, 0.04  # bisection halvings at most, and the bracket at which it stops
# The context assumed for a model whose config names none: the longest of the presets' (Llama 3.1).
MAX_CONTEXT = 131_072


# ---- inputs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolEntry:
    """Devices of one type available to the fleet, with the price used for them."""
    device: str
    count: int
    price_per_hour: float


def parse_devices(text: str) -> list[PoolEntry]:
    """'h100-sxm:16,a100-sxm-80g:32' (catalog prices) or 'name:count:price' (USD/device-hour)."""
    from hwmodels.devices import get_device
    items = [p.strip() for p in str(text or "").split(",") if p.strip()]
    if not items:
        raise InputError(f"--devices {text!r}: expected NAME:COUNT[,NAME:COUNT...], e.g. h100-sxm:16,a100-sxm-80g:32")
    out, seen = [], set()
    for it in items:
        parts = [p.strip() for p in it.split(":")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise InputError(f"--devices item {it!r}: expected NAME:COUNT or NAME:COUNT:PRICE_PER_HOUR")
        dev = get_device(parts[0])  # unknown names → InputError with suggestions
        try:
            count = int(parts[1])
        except ValueError:
            raise InputError(f"--devices item {it!r}: COUNT {parts[1]!r} must be an integer >= 1") from None
        if count < 1:
            raise InputError(f"--devices item {it!r}: COUNT must be >= 1")
        if dev.name in seen:
            raise InputError(f"--devices names {dev.name} twice")
        seen.add(dev.name)
        if len(parts) == 3:
            try:
                price = float(parts[2])
            except ValueError:
                raise InputError(f"--devices item {it!r}: PRICE {parts[2]!r} must be a number") from None
            if not (math.isfinite(price) and price > 0):
                raise InputError(f"--devices item {it!r}: PRICE must be > 0 (USD per device-hour)")
        else:
            price = dev.price_per_hour
            if price is None:
                raise InputError(f"device {dev.name} has no price in the catalog; give one as "
                                 f"{dev.name}:{count}:PRICE_PER_HOUR")
        out.append(PoolEntry(dev.name, count, float(price)))
    return out


def cluster_for_device(name: str):
    """(cluster, note): the first preset cluster built from this device; otherwise the PCIe A100
    server with the device swapped in (intra-node links of that server; noted)."""
    from hwmodels.clusters import cluster_names, load_cluster
    from hwmodels.devices import get_device
    for cn in cluster_names():
        c = load_cluster(cn)
        if c.device.name == name:
            return c, None
    base = load_cluster("pcie-a100")
    return (replace(base, name=f"pcie-{name}", device=get_device(name)),
            f"no preset cluster has {name}; modelled as 8 per node on PCIe (pcie-a100's links)")


# ---- step 1: capacity per replica -------------------------------------------------------------

ROLES = ("both", "prefill", "decode")


@dataclass
class Capacity:
    """One configuration's sustainable rate per replica under the SLOs (0 when none). `role`: an
    aggregated replica ("both"), or one of a disaggregated fleet's prefill or decode pools."""
    device: str
    tp: int
    rate: float  # requests/s per replica within the SLOs
    ttft_floor_s: float  # SLO-percentile TTFT at a near-zero rate (requests alone)
    tpot_floor_s: float
    probes: list = field(default_factory=list)  # (rate, ttft, tpot, ok)
    note: str | None = None
    role: str = "both"
    bound: float = math.inf  # the analytic upper bound on the rate that bracketed the bisection
    kv_transfer_s: float = 0.0  # prefill role: SLO-percentile prompt's KV transfer, part of TTFT

    def to_dict(self) -> dict:
        return {"device": self.device, "tp": self.tp, "role": self.role, "rate_per_replica": self.rate,
                "ttft_floor_s": self.ttft_floor_s, "tpot_floor_s": self.tpot_floor_s,
                "kv_transfer_s": self.kv_transfer_s, "rate_bound": self.bound if math.isfinite(self.bound) else None,
                "probes": len(self.probes), "note": self.note}


def _plan(groups, engine, dtype, kv_dtype, router="least_outstanding"):
    from simulator.serving.engine import ServingPlan
    return ServingPlan(tuple(groups), engine=engine, router=router, dtype=dtype, kv_dtype=kv_dtype)


def _metrics(rep, pk: str):
    ttft, tpot = rep.ttft_s.get(pk), rep.tpot_s.get(pk)
    ttft = math.inf if ttft is None or not math.isfinite(ttft) else ttft
    tpot = 0.0 if tpot is None or (isinstance(tpot, float) and math.isnan(tpot)) else tpot
    return ttft, tpot


def _steady(requests, growth: float = 1.5, latency=lambda r: r.first_token_s - r.arrival_s) -> bool:
    """False when the queue grows through the run (the rate is not sustainable, however short the
    run): median latency (TTFT by default) of the last fifth of arrivals > growth × that of the
    second fifth plus the smallest seen (a short probe at an overload rate can still meet a loose
    SLO). Medians, so that a few long prompts of a heavy-tailed workload do not read as a queue."""
    import statistics
    reqs = sorted((r for r in requests if math.isfinite(latency(r))), key=lambda r: r.arrival_s)
    n = len(reqs)
    if n < 10:
        return True
    lat = [latency(r) for r in reqs]
    early = statistics.median(lat[n // 5: max(n // 5 + 1, 2 * n // 5)])
    late = statistics.median(lat[4 * n // 5:])
    return late <= growth * early + min(lat)


def _length_percentile(dist, percentile: int, seed: int) -> float:
    import numpy as np
    return float(np.percentile(dist.sample(np.random.default_rng(seed), 2000), percentile))


def kv_link_bytes_per_s(cluster, tp: int) -> float:
    """What a replica's devices move between nodes per second (each GPU's share of the node's NICs:
    the KV of a disaggregated fleet crosses nodes, GPUDirect RDMA as in DistServe §4/Mooncake)."""
    return tp * cluster.nics_per_node * cluster.nic_bytes_per_s / cluster.devices_per_node


def kv_transfer_s(model, cluster, tp: int, prompt_tokens: float, kv_dtype: str) -> float:
    """Time to move one prompt's KV cache from a prefill replica to a decode replica on another
    node: the TP shards move in parallel, one send/recv each (the engine's `_transfer`)."""
    from hwmodels.collectives import collective_s
    from simulator.serving.kv_cache import kv_bytes_per_token
    nbytes = prompt_tokens * kv_bytes_per_token(model, 1, 1, kv_dtype) / tp
    return collective_s(cluster, "send_recv", 2, cluster.devices_per_node, float(nbytes))


def rate_bound(model, cluster, tp: int, workload, slo_tpot_s: float, engine: str, dtype: str,
               kv_dtype, role: str = "both", max_running: int = 4096) -> float:
    """An analytic estimate, close to an upper bound, of the rate one replica sustains (it
    brackets the bisection, so probes start near the answer). Per request a replica spends at
    least the prompt's tokens at the best per-token prefill speed (a full 8192-token chunk) and
    (osl − 1) decode steps shared by the B running requests, B the largest batch whose
    decode-only step fits the TPOT SLO (a mixed step is slower) and that the KV cache and the
    engine's max_num_seqs hold (`max_running`): rate ≤ 1 / (isl·t_tok + (osl − 1)·t(B)/B)
    (Sarathi-Serve, Agrawal et al. OSDI'24 §3: decode throughput grows with batch until the step
    time bounds it)."""
    from simulator.serving.costs import iteration_cost
    from simulator.serving.scheduler import Batch
    costs = iteration_cost(model, cluster, tp, 1, 1, dtype, kv_dtype, engine)
    isl, osl = max(1.0, workload.prompt_len.mean), max(1.0, workload.output_len.mean)
    prefill_per_request = isl * costs.prefill_s(8192) / 8192
    if role == "prefill":
        return 1.0 / prefill_per_request
    best = 0.0  # the most decode tokens per second within the TPOT SLO
    sizes = sorted({min(2 ** k, max(1, max_running)) for k in range(13)})
    for b in sizes:
        dec = Batch()
        dec.num_decode = dec.samples = b
        dec.decode_kv_tokens = int(b * (isl + osl / 2))
        t = costs.iteration_s(dec)
        if t > slo_tpot_s and b > 1:
            break
        best = max(best, b / t)
    decode_per_request = (osl - 1) / best if osl > 1 else 0.0
    if role == "decode":
        return 1.0 / decode_per_request if decode_per_request > 0 else math.inf
    return 1.0 / (prefill_per_request + decode_per_request)


def _cache_key(model, cluster, tp, workload, *rest):
    key = (model.name, model, cluster.name, cluster.device.name, tp, workload.prompt_len,
           workload.output_len, workload.arrival_cv, workload.shared_prefix, *rest)
    try:
        hash(key)
    except TypeError:  # an unhashable model spec: no caching
        return None
    return key


def capacities(model, work: list, workload, slo_ttft_s: float, slo_tpot_s: float, percentile: int,
               requests: int, seed: int, engine: str, dtype: str, kv_dtype, jobs: int | None = None,
               progress=None, executor=None) -> list[Capacity]:
    """`replica_capacity` of every (cluster, tp, role) in `work`, in that order. Configurations are
    independent: they run on `executor` (simulator.executor, e.g. a RayExecutor) when given, else
    with `jobs` > 1 (default: the CPU count) in forked worker processes, which inherit the loaded
    kernel tables; results land in the parent's cache, the same on every executor."""
    import os
    args = [(c, tp, role) for c, tp, role in work]
    rest = (slo_ttft_s, slo_tpot_s, percentile, requests, seed, engine, dtype, kv_dtype)
    keys = [_cache_key(model, c, tp, workload, *rest, ITERATIONS, role, REL_TOL) for c, tp, role in args]
    out: list = [_CAPACITY_CACHE.get(k) if k is not None else None for k in keys]
    todo = [i for i, cap in enumerate(out) if cap is None]
    jobs = min(jobs or os.cpu_count() or 1, len(todo))
    done = len(args) - len(todo)

    def finish(i, cap):
        nonlocal done
        out[i] = cap
        if keys[i] is not None:
            _CAPACITY_CACHE[keys[i]] = cap
        done += 1
        if progress:
            c, tp, role = args[i]
            progress(done, len(args), f"{c.device.name} tp={tp} {role}")

    import multiprocessing
    if executor is None and jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        from simulator.executor import LocalExecutor
        executor = LocalExecutor(jobs)
    if executor is not None and todo:
        from simulator.serving.costs import iteration_cost
        for c in {id(c): c for c, _, _ in args}.values():  # load kernel tables before a fork
            iteration_cost(model, c, 1, 1, 1, dtype, kv_dtype, engine)
        order = sorted(todo, key=lambda i: args[i][1])  # small tp (slow probes) first
        executor.run(_capacity_probe, [(model, args[i][0], args[i][1], workload, *rest, args[i][2]) for i in order],
                     on_done=lambda o: finish(order[o.index], o.value), capture_errors=False)
    else:
        for i in todo:
            c, tp, role = args[i]
            finish(i, replica_capacity(model, c, tp, workload, slo_ttft_s, slo_tpot_s, percentile,
                                       requests, seed, engine, dtype, kv_dtype, role=role))
    return out


def _capacity_probe(a: tuple) -> Capacity:
    """replica_capacity(*a[:-1], role=a[-1]): one task for an executor."""
    return replica_capacity(*a[:-1], role=a[-1])


def replica_capacity(model, cluster, tp: int, workload, slo_ttft_s: float, slo_tpot_s: float,
                     percentile: int = 90, requests: int = 400, seed: int = 0, engine: str = "vllm",
                     dtype: str = "bf16", kv_dtype: str | None = None, iterations: int = ITERATIONS,
                     role: str = "both", rel_tol: float = REL_TOL) -> Capacity:
    """Bisection on the open-loop rate of one replica (tp devices of `cluster`): the highest rate
    whose probe keeps the `percentile` TTFT ≤ slo_ttft_s and TPOT ≤ slo_tpot_s with every request
    served and no growing queue. The probe at 1e-3 req/s gives the floors (a config whose floors
    miss the SLO has rate 0); `rate_bound` brackets the search, which stops when the bracket is
    within `rel_tol` (or after `iterations` halvings).

    Roles (disaggregation, DistServe §3): "prefill" probes the replica on the prompts alone (one
    output token) and holds TTFT + the KV transfer to a decode node to the TTFT SLO; "decode"
    probes a decode-only replica whose requests arrive with their KV (simulator.serving.engine's
    decode-only mode) and holds TPOT to its SLO. Raises nothing for a model that does not fit:
    rate 0 with the reason in `note`."""
    from simulator.serving.engine import ReplicaGroup, ServingSimulation
    from simulator.serving.workload import LengthDist, RateSchedule
    if role not in ROLES:
        raise InputError(f"role {role!r}; valid: {', '.join(ROLES)}")
    pk = PERCENTILES[percentile]
    key = _cache_key(model, cluster, tp, workload, slo_ttft_s, slo_tpot_s, percentile, requests, seed,
                     engine, dtype, kv_dtype, iterations, role, rel_tol)
    hit = _CAPACITY_CACHE.get(key) if key is not None else None
    if hit is not None:
        return hit
    plan = _plan([ReplicaGroup(cluster, tp, role="decode" if role == "decode" else "both")],
                 engine, dtype, kv_dtype)
    base = workload
    transfer = 0.0
    if role == "prefill":  # the prompt and its first token; the KV then leaves for a decode node
        base = replace(workload, output_len=LengthDist.parse("1"))
    probes = []
    lifetime_s = 0.0  # the longest a request lives within the SLOs (set below)

    held = {}  # what the probed replica holds: KV tokens and running sequences

    def probe(rate, n=None):
        # A probe must span several request lifetimes and at least the TTFT SLO, or an overload
        # goes unseen: a replica can hold a short burst whole in its KV cache, or prefill it in a
        # batch or two, and meet the SLOs while it lasts.
        n = n or max(requests, min(MAX_PROBE_REQUESTS, math.ceil(rate * max(3 * lifetime_s, slo_ttft_s))))
        wl = replace(base, rate=RateSchedule(((rate, math.inf),)), num_requests=n,
                     seed=seed, concurrency=0, trace=None, warmup_requests=0,
                     slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
        sim = ServingSimulation(model, plan, wl)
        held.setdefault("kv_tokens", sim.replicas[0].pool.capacity_tokens)
        held.setdefault("max_seqs", sim.replicas[0].cfg.max_num_seqs)
        rep = sim.run()
        ttft, tpot = _metrics(rep, pk)
        ttft += transfer  # 0 but for a prefill pool
        # the floor probe (requests alone) cannot queue; a decode pool's queue shows in end-to-end time
        steady = rate <= FLOOR_RATE or (_steady(sim.requests, latency=lambda r: r.finish_s - r.arrival_s)
                                        if role == "decode" else _steady(sim.requests))
        ok = (rep.rejected == 0 and rep.completed == n and steady
              and (role == "decode" or ttft <= slo_ttft_s) and (role == "prefill" or tpot <= slo_tpot_s))
        probes.append((rate, ttft, tpot, ok))
        return ok, ttft, tpot

    try:
        if role == "prefill":
            from simulator.serving.costs import iteration_cost
            kvd = iteration_cost(model, cluster, tp, 1, 1, dtype, kv_dtype, engine).kv_dtype
            transfer = kv_transfer_s(model, cluster.with_nodes(max(2, cluster.num_nodes)), tp, _length_percentile(workload.prompt_len, percentile, seed), kvd)
        ok, ttft0, tpot0 = probe(FLOOR_RATE, min(requests, 50))  # requests alone: a few suffice
        footprint = workload.prompt_len.mean + workload.output_len.mean / 2  # KV tokens per running request
        bound = rate_bound(model, cluster, tp, workload, slo_tpot_s, engine, dtype, kv_dtype, role,
                           min(held["max_seqs"], int(held["kv_tokens"] // max(1.0, footprint))))
        lifetime_s = (ttft0 if math.isfinite(ttft0) else slo_ttft_s) + \
            (0.0 if role == "prefill" else max(0.0, workload.output_len.mean - 1) * slo_tpot_s)
    except InputError as e:
        cap = Capacity(cluster.device.name, tp, 0.0, math.inf, math.inf, probes, note=str(e), role=role)
    else:
        if not ok:
            cap = Capacity(cluster.device.name, tp, 0.0, ttft0, tpot0, probes, role=role, bound=bound)
        else:
            lo, hi = FLOOR_RATE, None
            if math.isfinite(bound) and bound > lo:  # the estimate first, then a step either way
                step = bound
                while step > lo and not probe(step)[0]:
                    hi, step = step, step * 0.8
                if step > lo:
                    lo = step
                if hi is None:
                    hi = 1.25 * lo
            else:
                hi = 1.0
            for _ in range(16):  # the bound is a model: a probe must fail at hi
                if hi in (p[0] for p in probes) or not probe(hi)[0]:
                    break
                lo, hi = hi, hi * 2
            else:
                hi = None
            if hi is not None:
                for _ in range(iterations):
                    if hi - lo <= rel_tol * hi:
                        break
                    mid = (lo + hi) / 2
                    if probe(mid)[0]:
                        lo = mid
                    else:
                        hi = mid
            cap = Capacity(cluster.device.name, tp, lo, ttft0, tpot0, probes, role=role, bound=bound,
                           kv_transfer_s=transfer)
    if key is not None:
        _CAPACITY_CACHE[key] = cap
    return cap


# ---- step 2: the fleet ILP and its brute-force twin -----------------------------------------

@dataclass(frozen=True)
class Option:
    """A replica configuration for the ILP: `devices` devices of type `group` serve `rate` req/s
    in `role` (both = aggregated; prefill/decode = a disaggregated pool) and cost `price` USD per
    device-hour; `link` is what the replica moves between nodes per second (KV transfers)."""
    name: str
    group: str
    devices: int
    rate: float
    price: float
    role: str = "both"
    link: float = math.inf

    @property
    def cost(self) -> float:
        return self.devices * self.price


@dataclass
class FleetSolution:
    counts: dict  # option name → replicas (> 0 only)
    cost_per_hour: float
    capacity: float  # the least, over the roles served, of the capacity Σ n·rate
    status: str
    optimal: bool
    solve_time_s: float = 0.0
    capacities: dict = field(default_factory=dict)  # role → Σ n·rate
    gap: float = DEFAULT_GAP
    time_limit_s: float = DEFAULT_TIME_LIMIT_S


def _demands(required) -> dict:
    """{role: rate}: a bare number is an aggregated demand."""
    return dict(required) if isinstance(required, dict) else {"both": float(required)}


def _replica_vars(opts, available: dict) -> dict:
    """n_c: integer replicas of each option, at most what its device type's count allows."""
    return {i: pulp.LpVariable(f"replicas_{i}", lowBound=0, upBound=available[o.group] // o.devices,
                               cat="Integer") for i, o in enumerate(opts)}


def _device_limits(prob, opts, n: dict, available: dict) -> None:
    """[devices_t]: the replicas of each device type fit in the devices available."""
    for g in sorted({o.group for o in opts}):
        prob += (pulp.lpSum(o.devices * n[i] for i, o in enumerate(opts) if o.group == g)
                 <= available[g], f"devices_{g}")


def _solve_fleet(prob, time_limit_s: float, gap: float):
    """CBC under the limits (planner.ilp's solve, limits checked there): the SolverRun and the
    status this planner reports ("time limit (not proven optimal)" for a time-limited incumbent)."""
    from planner.ilp import _solve
    run = _solve(prob, time_limit_s, gap)
    return run, (run.status if run.optimal else "time limit (not proven optimal)")


def fleet_ilp(options: list[Option], required, available: dict, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
              gap: float = DEFAULT_GAP, kv_bytes_per_s: float = 0.0) -> FleetSolution | None:
    """The program in the module docstring. `required`: req/s for an aggregated fleet, or
    {"prefill": R_p, "decode": R_d} for a disaggregated one, whose prefill pool must send and
    decode pool receive `kv_bytes_per_s` of KV over their links. None when infeasible (see
    `explain_infeasible`)."""
    from planner.ilp import _check_limits
    _check_limits(time_limit_s, gap)
    need = _demands(required)
    opts = [o for o in options if o.rate > 0 and o.role in need and o.devices <= available.get(o.group, 0)]
    if {o.role for o in opts} != set(need):
        return None
    prob = pulp.LpProblem("serving_fleet", pulp.LpMinimize)
    n = _replica_vars(opts, available)
    prob += pulp.lpSum(o.cost * n[i] for i, o in enumerate(opts)), "cost_per_hour"
    for role, r in sorted(need.items()):
        prob += (pulp.lpSum(o.rate * n[i] for i, o in enumerate(opts) if o.role == role) >= r,
                 "capacity" if role == "both" else f"capacity_{role}")
    _device_limits(prob, opts, n, available)
    if kv_bytes_per_s > 0:  # DistServe §4.3: the KV of every request crosses the pools' links
        for role, label in (("prefill", "kv_link_out"), ("decode", "kv_link_in")):
            if role in need:  # in GB/s: coefficients near 1 keep CBC's tolerances meaningful
                prob += (pulp.lpSum(min(o.link, 1e15) / 1e9 * n[i] for i, o in enumerate(opts) if o.role == role)
                         >= kv_bytes_per_s / 1e9, label)
    run, status = _solve_fleet(prob, time_limit_s, gap)
    if not run.feasible:
        return None
    counts = {}
    for i, o in enumerate(opts):
        k = int(round(n[i].value() or 0))
        if k:
            counts[o.name] = counts.get(o.name, 0) + k
    by = {o.name: o for o in opts}
    cost = sum(by[k].cost * v for k, v in counts.items())
    caps = {role: sum(by[k].rate * v for k, v in counts.items() if by[k].role == role) for role in need}
    return FleetSolution(counts, cost, min(caps.values()), status, run.optimal, run.solve_time_s, caps,
                         gap, time_limit_s)


def fleet_brute_force(options: list[Option], required, available: dict,
                      kv_bytes_per_s: float = 0.0) -> FleetSolution | None:
    """Every integer vector n within the device limits; the cheapest meeting the demands (small
    instances only: the product of (available // devices + 1) over the options)."""
    need = _demands(required)
    opts = [o for o in options if o.rate > 0 and o.role in need and o.devices <= available.get(o.group, 0)]
    best = None
    for ns in itertools.product(*[range(available[o.group] // o.devices + 1) for o in opts]):
        use = {}
        for o, k in zip(opts, ns):
            use[o.group] = use.get(o.group, 0) + o.devices * k
        if any(v > available[g] for g, v in use.items()):
            continue
        caps = {role: sum(o.rate * k for o, k in zip(opts, ns) if o.role == role) for role in need}
        if any(caps[role] < r - 1e-9 for role, r in need.items()):
            continue
        if kv_bytes_per_s > 0 and any(
                sum(min(o.link, 1e15) * k for o, k in zip(opts, ns) if o.role == role) < kv_bytes_per_s - 1e-6
                for role in ("prefill", "decode") if role in need):
            continue
        cost = sum(o.cost * k for o, k in zip(opts, ns))
        if best is None or cost < best.cost_per_hour - 1e-9:
            best = FleetSolution({o.name: k for o, k in zip(opts, ns) if k}, cost, min(caps.values()),
                                 "Optimal", True, 0.0, caps)
    return best


# ---- request-size classes (Mélange) -------------------------------------------------------------

def size_classes(workload, k: int, seed: int = 0, samples: int = 4000) -> list[tuple]:
    """Split the workload's prompt lengths into at most `k` classes of equal request share
    (quantiles of `samples` seeded draws): [(upper bound in tokens, share of requests, LengthDist
    of the class's prompt lengths)], shortest first. Fewer classes when the lengths do not spread
    (a fixed length is one class)."""
    import numpy as np

    from simulator.serving.workload import LengthDist
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 8:
        raise InputError(f"--size-classes {k!r} must be an integer from 1 to 8")
    x = np.sort(workload.prompt_len.sample(np.random.default_rng(seed), samples))
    cuts = sorted({int(np.quantile(x, q / k, method="inverted_cdf")) for q in range(1, k)} | {int(x[-1])})
    out, lo = [], 0
    for b in cuts:
        vals = x[(x > lo) & (x <= b)]
        if len(vals):
            out.append((int(b), len(vals) / len(x), LengthDist.empirical(vals, f"prompt {int(vals[0])}-{int(b)}")))
        lo = b
    return out


@dataclass(frozen=True)
class ClassOption:
    """A replica configuration with its sustainable rate for every size class (0: misses the
    SLOs on that class)."""
    name: str
    group: str
    devices: int
    rates: tuple
    price: float

    @property
    def cost(self) -> float:
        return self.devices * self.price


def fleet_ilp_classes(options: list[ClassOption], demand: list[float], available: dict,
                      time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = DEFAULT_GAP):
    """Mélange's allocation (Griggs et al. arXiv 2404.14527 §5.3): integer replicas n_c and the
    class-k load y_ck (req/s) each configuration takes,

        minimise    Σ_c n_c · cost_c
        subject to  Σ_c y_ck ≥ R_k                       ∀ k   [class_k]
                    Σ_k y_ck / r_ck ≤ n_c                ∀ c   [load_c]  (a replica's time shared by classes)
                    Σ_{c: device_c = t} n_c · devices_c ≤ available_t      [devices_t]

    Returns (FleetSolution, {name: [y_ck]}) or None when infeasible."""
    opts = [o for o in options if any(r > 0 for r in o.rates) and o.devices <= available.get(o.group, 0)]
    K = len(demand)
    if not opts or any(not any(o.rates[k] > 0 for o in opts) for k in range(K) if demand[k] > 0):
        return None
    prob = pulp.LpProblem("serving_fleet_classes", pulp.LpMinimize)
    n = _replica_vars(opts, available)
    y = {(i, k): pulp.LpVariable(f"load_{i}_{k}", 0) for i, o in enumerate(opts) for k in range(K) if o.rates[k] > 0}
    prob += pulp.lpSum(o.cost * n[i] for i, o in enumerate(opts)), "cost_per_hour"
    for k in range(K):
        prob += pulp.lpSum(v for (i, kk), v in y.items() if kk == k) >= demand[k], f"class_{k}"
    for i, o in enumerate(opts):
        prob += pulp.lpSum(y[i, k] / o.rates[k] for k in range(K) if (i, k) in y) <= n[i], f"load_{i}"
    _device_limits(prob, opts, n, available)
    run, status = _solve_fleet(prob, time_limit_s, gap)
    if not run.feasible:
        return None
    counts, loads = {}, {}
    for i, o in enumerate(opts):
        kn = int(round(n[i].value() or 0))
        if kn:
            counts[o.name] = kn
            loads[o.name] = [max(0.0, y[i, k].value() or 0.0) if (i, k) in y else 0.0 for k in range(K)]
    cost = sum(o.cost * counts.get(o.name, 0) for o in opts)
    total = sum(demand)
    return (FleetSolution(counts, cost, total, status, run.optimal, run.solve_time_s, {"both": total},
                          gap, time_limit_s), loads)


def class_scale(options: list[ClassOption], counts: dict, demand: list[float]) -> float:
    """The largest λ such that λ·demand can be placed on the fleet `counts` (an LP): its capacity
    as a multiple of the demand, for the headroom."""
    opts = [o for o in options if counts.get(o.name)]
    prob = pulp.LpProblem("class_headroom", pulp.LpMaximize)
    lam = pulp.LpVariable("scale", 0)
    y = {(i, k): pulp.LpVariable(f"y_{i}_{k}", 0) for i, o in enumerate(opts) for k in range(len(demand))
         if o.rates[k] > 0}
    prob += lam
    for k in range(len(demand)):
        prob += pulp.lpSum(v for (i, kk), v in y.items() if kk == k) >= lam * demand[k]
    for i, o in enumerate(opts):
        prob += pulp.lpSum(y[i, k] / o.rates[k] for k in range(len(demand)) if (i, k) in y) <= counts[o.name]
    prob.solve(pulp.PULP_CBC_CMD(msg=False))
    return float(lam.value() or 0.0) if prob.sol_status == pulp.LpSolutionOptimal else 0.0


def fleet_brute_force_classes(options: list[ClassOption], demand: list[float], available: dict):
    """Every integer vector n within the device limits, cheapest first; the first whose class
    loads can be placed (an LP, no integers) wins. Small instances only (tests)."""
    opts = [o for o in options if any(r > 0 for r in o.rates) and o.devices <= available.get(o.group, 0)]
    cands = []
    for ns in itertools.product(*[range(available[o.group] // o.devices + 1) for o in opts]):
        use = {}
        for o, kn in zip(opts, ns):
            use[o.group] = use.get(o.group, 0) + o.devices * kn
        if all(v <= available[g] for g, v in use.items()):
            cands.append((sum(o.cost * kn for o, kn in zip(opts, ns)), ns))
    for cost, ns in sorted(cands):
        prob = pulp.LpProblem("placement", pulp.LpMinimize)
        y = {(i, k): pulp.LpVariable(f"y_{i}_{k}", 0) for i, o in enumerate(opts) for k in range(len(demand))
             if o.rates[k] > 0 and ns[i] > 0}
        prob += pulp.lpSum(y.values())
        for k in range(len(demand)):
            prob += pulp.lpSum(v for (i, kk), v in y.items() if kk == k) >= demand[k]
        for i, o in enumerate(opts):
            prob += pulp.lpSum(y[i, k] / o.rates[k] for k in range(len(demand)) if (i, k) in y) <= ns[i]
        prob.solve(pulp.PULP_CBC_CMD(msg=False))
        if prob.sol_status == pulp.LpSolutionOptimal:
            return FleetSolution({o.name: kn for o, kn in zip(opts, ns) if kn}, cost, sum(demand), "Optimal", True)
    return None


def explain_infeasible(caps: list[Capacity], pool: list[PoolEntry], required_rate: float,
                       slo_ttft_s: float, slo_tpot_s: float, percentile: int, disaggregated: bool = False,
                       options: list | None = None, kv_bytes_per_s: float = 0.0) -> InputError:
    """A one-line InputError naming the binding constraint (for a disaggregated search: the
    prefill pool's TTFT, the decode pool's TPOT, the devices, or the KV link between the pools)."""
    if disaggregated:
        return _explain_disaggregated(caps, pool, required_rate, slo_ttft_s, slo_tpot_s, percentile,
                                      options or [], kv_bytes_per_s)
    caps = [c for c in caps if c.role == "both"]
    live = [c for c in caps if c.rate > 0]
    if not live:
        floors = [c for c in caps if math.isfinite(c.ttft_floor_s)]
        if not floors:
            notes = "; ".join(sorted({c.note for c in caps if c.note}))
            return InputError(f"the model fits no configuration of the pool (tp up to 8): {notes}")
        best_ttft = min(floors, key=lambda c: c.ttft_floor_s)
        if best_ttft.ttft_floor_s > slo_ttft_s:
            return InputError(f"SLO TTFT {_fmt_s(slo_ttft_s)} is below the fastest single-request "
                              f"p{percentile} TTFT {_fmt_s(best_ttft.ttft_floor_s)} on any configuration "
                              f"({best_ttft.device} tp={best_ttft.tp})")
        best_tpot = min(floors, key=lambda c: c.tpot_floor_s)
        if best_tpot.tpot_floor_s > slo_tpot_s:
            return InputError(f"SLO TPOT {_fmt_s(slo_tpot_s)} is below the fastest single-request "
                              f"p{percentile} TPOT {_fmt_s(best_tpot.tpot_floor_s)} on any configuration "
                              f"({best_tpot.device} tp={best_tpot.tp})")
        return InputError(f"no configuration meets SLO TTFT {_fmt_s(slo_ttft_s)} and TPOT "
                          f"{_fmt_s(slo_tpot_s)} together (p{percentile})")
    parts, most = [], 0.0
    for e in pool:
        mine = [c for c in live if c.device == e.device and c.tp <= e.count]
        if not mine:
            parts.append(f"{e.device}: no configuration meets the SLOs")
            continue
        # devices this type alone would need: its most device-efficient configuration
        best = max(mine, key=lambda c: c.rate / c.tp)
        need = math.ceil(required_rate / best.rate - 1e-9) * best.tp
        most += max((e.count // c.tp) * c.rate for c in mine)
        parts.append(f"not enough {e.device}: need >= {need} alone (tp={best.tp}, "
                     f"{best.rate:.3g} req/s per replica), have {e.count}")
    return InputError(f"{'; '.join(parts)}; the pool serves at most ~{most:.3g} req/s within the "
                      f"SLOs, {required_rate:.3g} req/s required")


def _explain_disaggregated(caps, pool, rate, slo_ttft_s, slo_tpot_s, percentile, options, kv_bytes_per_s):
    pre = [c for c in caps if c.role == "prefill"]
    dec = [c for c in caps if c.role == "decode"]
    for role, mine in (("prefill", pre), ("decode", dec)):
        if not any(c.rate > 0 for c in mine):
            fits = [c for c in mine if math.isfinite(c.ttft_floor_s)]
            if not fits:
                notes = "; ".join(sorted({c.note for c in mine if c.note}))
                return InputError(f"the model fits no {role} configuration of the pool (tp up to 8): {notes}")
            if role == "prefill":
                b = min(fits, key=lambda c: c.ttft_floor_s + c.kv_transfer_s)
                return InputError(f"SLO TTFT {_fmt_s(slo_ttft_s)} is below the fastest prefill + KV transfer "
                                  f"p{percentile} {_fmt_s(b.ttft_floor_s + b.kv_transfer_s)} "
                                  f"({b.device} tp={b.tp}; disaggregated)")
            b = min(fits, key=lambda c: c.tpot_floor_s)
            return InputError(f"SLO TPOT {_fmt_s(slo_tpot_s)} is below the fastest decode-pool p{percentile} "
                              f"TPOT {_fmt_s(b.tpot_floor_s)} ({b.device} tp={b.tp}; disaggregated)")
    available = {e.device: e.count for e in pool}
    need = {"prefill": rate, "decode": rate}
    if kv_bytes_per_s > 0 and fleet_ilp(options, need, available) is not None:
        out = max((o.link * (available[o.group] // o.devices) for o in options if o.role == "prefill" and o.rate > 0),
                  default=0.0)
        return InputError(f"KV link: the prefill pool must send {kv_bytes_per_s / 1e9:.3g} GB/s of KV to the "
                          f"decode pool; the pool's links carry at most ~{out / 1e9:.3g} GB/s (kv_link)")
    served = {role: sum(max(((available[o.group] // o.devices) * o.rate for o in options
                             if o.role == role and o.group == g and o.rate > 0), default=0.0)
                        for g in available) for role in need}
    return InputError(f"not enough devices for a disaggregated fleet: {rate:.3g} req/s needs prefill and "
                      f"decode pools together; the whole pool alone could prefill ~{served['prefill']:.3g} "
                      f"and decode ~{served['decode']:.3g} req/s within the SLOs (devices: "
                      f"{', '.join(f'{e.device}×{e.count}' for e in pool)})")


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    return f"{s:g}s" if s >= 1 else f"{s * 1e3:.3g}ms"


# ---- step 3: verification and the whole search ----------------------------------------------

DISAGG_MODES = ("auto", "on", "off")


def option_name(device: str, tp: int, role: str = "both") -> str:
    return f"{device}/tp{tp}" + ("" if role == "both" else f"/{role}")


def verify_fleet(model, clusters: dict, counts: dict, by_opt: dict, workload, rate: float,
                 slo_ttft_s: float, slo_tpot_s: float, percentile: int, requests: int, seed: int,
                 engine: str, dtype: str, kv_dtype, class_bounds: tuple = (), class_shares: dict | None = None):
    """Simulate the whole fleet (mixed device types, least-outstanding routers; a disaggregated
    fleet's prefill pool hands each KV cache to its decode pool over the links) at `rate`. With
    size classes, a size-class router gives each replica of option `name` the share
    class_shares[name][k] of class k (Mélange's placement)."""
    from simulator.serving.engine import ReplicaGroup, ServingPlan, simulate
    from simulator.serving.workload import RateSchedule
    order = {"prefill": 0, "both": 0, "decode": 1}
    names = sorted(counts, key=lambda nm: (order[by_opt[nm].role], nm))
    groups = [ReplicaGroup(clusters[by_opt[nm].group], by_opt[nm].devices, count=counts[nm], role=by_opt[nm].role)
              for nm in names]
    if class_shares:
        plan = ServingPlan(tuple(groups), engine=engine, router="size_class", dtype=dtype, kv_dtype=kv_dtype,
                           class_bounds=tuple(class_bounds),
                           class_shares=tuple(tuple(class_shares[nm]) for nm in names))
    else:
        plan = _plan(groups, engine, dtype, kv_dtype)
    wl = replace(workload, rate=RateSchedule(((rate, math.inf),)), num_requests=requests, seed=seed,
                 concurrency=0, trace=None, warmup_requests=0, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    return simulate(model, plan, wl)


def plan_serving(model, pool: list[PoolEntry], workload, rate: float, slo_ttft_s: float,
                 slo_tpot_s: float, percentile: int = 90, requests: int = 400, seed: int = 0,
                 engine: str = "vllm", dtype: str = "bf16", kv_dtype: str | None = None,
                 time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = DEFAULT_GAP,
                 single_type: bool = True, max_retries: int = 4, disagg: str = "auto",
                 pareto: bool = True, progress=None, jobs: int | None = None, classes: int = 1,
                 executor=None) -> dict:
    """The `plan serve` document: capacities, the cheapest fleet — aggregated, or prefill/decode
    disaggregated (`disagg` on), or the cheaper of the two (auto) — the cheapest single-type fleet
    per device type for comparison when `single_type`, each verified by simulation, and the
    cost-vs-latency Pareto front of the verified fleets (with fleets of 1.5x and 2x the needed
    capacity when `pareto`). `progress(done, total, label)` is called as capacities complete;
    `jobs` worker processes measure them (default: the CPU count), or `executor`
    (simulator.executor) when given. `classes` > 1 splits the
    prompts into that many request-size classes for the aggregated fleets: capacities per class
    and Mélange's class-placement ILP (`fleet_ilp_classes`), verified with a size-class router."""
    if percentile not in PERCENTILES:
        raise InputError(f"SLO percentile {percentile!r}; valid: {', '.join(map(str, PERCENTILES))}")
    if not (rate > 0 and math.isfinite(rate)):
        raise InputError(f"--rate {rate!r} must be a positive number of requests/s")
    if disagg not in DISAGG_MODES:
        raise InputError(f"--disagg {disagg!r}; valid: {', '.join(DISAGG_MODES)}")
    # A request longer than the model's context is refused by the engines (vLLM max_model_len);
    # a workload made of them has no serving plan (and would cost hours of simulated decoding).
    ctx = model.max_position_embeddings or MAX_CONTEXT
    mean_len = workload.prompt_len.mean + workload.output_len.mean
    if mean_len > ctx:
        raise InputError(f"mean prompt ({workload.prompt_len.mean:,.0f}) + output ({workload.output_len.mean:,.0f}) "
                         f"= {mean_len:,.0f} tokens exceeds {model.name}'s context of {ctx:,} tokens "
                         f"(max_position_embeddings); use shorter --prompt-len/--output-len")
    from simulator.serving.costs import iteration_cost
    from simulator.serving.kv_cache import kv_bytes_per_token
    t0 = time.perf_counter()
    pk = PERCENTILES[percentile]
    modes = {"off": ("aggregated",), "on": ("disaggregated",), "auto": ("aggregated", "disaggregated")}[disagg]
    roles = (("both",) if "aggregated" in modes else ()) + (("prefill", "decode") if "disaggregated" in modes else ())
    clusters, notes, caps = {}, [], []
    work = []
    for e in pool:
        c, note = cluster_for_device(e.device)
        c.device.peak(dtype)  # dtype unsupported on this device → InputError
        clusters[e.device] = c
        if note:
            notes.append(note)
        work += [(c, tp, role) for role in roles for tp in TPS if tp <= c.devices_per_node and tp <= e.count]
    size = size_classes(workload, classes, seed) if classes > 1 and "aggregated" in modes else []
    if len(size) < 2:  # lengths that do not spread make one class: no split
        size = []
    agg_work = [w for w in work if w[2] == "both"] if size else []
    work = [w for w in work if w not in agg_work]  # with classes, aggregated configs are measured per class
    caps = capacities(model, work, workload, slo_ttft_s, slo_tpot_s, percentile, requests, seed,
                      engine, dtype, kv_dtype, jobs, progress, executor)
    class_caps = [capacities(model, agg_work, replace(workload, prompt_len=dist), slo_ttft_s, slo_tpot_s,
                             percentile, requests, seed, engine, dtype, kv_dtype, jobs, progress, executor)
                  for _, _, dist in size]
    price = {e.device: e.price_per_hour for e in pool}
    available = {e.device: e.count for e in pool}
    options = [Option(option_name(c.device, c.tp, c.role), c.device, c.tp, c.rate, price[c.device], c.role,
                      kv_link_bytes_per_s(clusters[c.device], c.tp)) for c in caps]
    class_options = [ClassOption(option_name(c.device, c.tp), c.device, c.tp,
                                 tuple(cc[j].rate for cc in class_caps), price[c.device])
                     for j, c in enumerate(class_caps[0])] if class_caps else []
    by_opt = {o.name: o for o in options}
    by_opt.update({o.name: Option(o.name, o.group, o.devices, 0.0, o.price) for o in class_options})
    by_cap = {option_name(c.device, c.tp, c.role): c for c in caps + (class_caps[0] if class_caps else [])}
    first = next(iter(clusters.values()))
    kv_dt = iteration_cost(model, first, 1, 1, 1, dtype, kv_dtype, engine).kv_dtype
    kv_rate = rate * workload.prompt_len.mean * kv_bytes_per_token(model, 1, 1, kv_dt)  # bytes/s between pools
    verified = []

    def solve_and_verify(opts, mode, label, scale=1.0):
        need = {"both": rate * scale} if mode == "aggregated" else {"prefill": rate * scale, "decode": rate * scale}
        kv = kv_rate if mode == "disaggregated" else 0.0
        by_class = bool(opts) and isinstance(opts[0], ClassOption)
        demand = [rate * scale * share for _, share, _ in size] if by_class else []
        fleet_notes = []
        for attempt in range(max_retries + 1):
            shares = None
            if by_class:
                out = fleet_ilp_classes(opts, demand, available, time_limit_s, gap)
                if out is None:
                    return None, fleet_notes
                sol, loads = out
                shares = {nm: [y / sol.counts[nm] for y in loads[nm]] for nm in sol.counts}
            else:
                sol = fleet_ilp(opts, need, available, time_limit_s, gap, kv)
            if sol is None:
                return None, fleet_notes
            nrep = sum(sol.counts.values())
            rep = verify_fleet(model, clusters, sol.counts, by_opt, workload, rate, slo_ttft_s, slo_tpot_s,
                               percentile, max(requests, min(5000, 100 * nrep)), seed, engine, dtype, kv_dtype,
                               tuple(b for b, _, _ in size), shares)
            ttft, tpot = _metrics(rep, pk)
            ok = ttft <= slo_ttft_s and tpot <= slo_tpot_s and rep.rejected == 0
            if ok or attempt == max_retries:
                if not ok:
                    fleet_notes.append(f"{label}: still misses the SLO after {max_retries} re-solves")
                doc = _fleet_doc(sol, rep, by_cap, rate, pk, ok, slo_ttft_s, slo_tpot_s, mode)
                if shares:
                    scale_max = class_scale(opts, sol.counts, [rate * sh for _, sh, _ in size])
                    doc["capacity_req_per_s"] = rate * scale_max
                    doc["headroom"] = scale_max - 1.0
                    doc["size_classes"] = [{"max_prompt_len": b, "share": sh, "prompt_len": d.text}
                                           for b, sh, d in size]
                    for r in doc["replicas"]:
                        r["class_load_req_per_s"] = shares[option_name(r["device"], r["tp"])]
                        r["rate_per_replica"] = sum(r["class_load_req_per_s"])
                verified.append(doc)
                return doc, fleet_notes
            if by_class:  # more of every class's load: the next, strictly dearer or larger fleet
                demand = [d * 1.1 for d in demand]
            fleet_notes.append(f"{label}: {_describe(sol.counts)} missed the SLO in simulation "
                               f"({pk} TTFT {_fmt_s(ttft)}, TPOT {_fmt_s(tpot)}); re-solved for more capacity")
            # the next solution: strictly more capacity where the simulation missed (TTFT: the
            # prefill pool; TPOT: the decode pool; aggregated: the one pool)
            for role, missed in (("both", True), ("prefill", ttft > slo_ttft_s or rep.rejected),
                                 ("decode", tpot > slo_tpot_s)):
                if role in need and missed:
                    need[role] = sol.capacities[role] * 1.0001 + 1e-6
        return None, fleet_notes

    def mode_options(mode, device=None):
        if mode == "aggregated" and class_options:
            return [o for o in class_options if device is None or o.group == device]
        want = ("both",) if mode == "aggregated" else ("prefill", "decode")
        return [o for o in options if o.role in want and (device is None or o.group == device)]

    fleets = []
    for mode in modes:
        f, fnotes = solve_and_verify(mode_options(mode), mode, f"cheapest {mode} fleet")
        notes.extend(fnotes)
        if f is not None:
            fleets.append(f)
        elif len(modes) > 1:
            notes.append(f"no {mode} fleet of this pool serves {rate:g} req/s within the SLOs")
    if not fleets:
        raise explain_infeasible(caps + [c for cc in class_caps for c in cc], pool, rate, slo_ttft_s,
                                 slo_tpot_s, percentile,
                                 disaggregated=modes == ("disaggregated",), options=options,
                                 kv_bytes_per_s=kv_rate)
    fleets.sort(key=lambda f: (not f["meets_slo"], f["cost_per_hour"]))
    best_mode = fleets[0]["mode"]
    if single_type and len(pool) > 1:
        for e in pool:
            for mode in modes:
                if any({r["device"] for r in f["replicas"]} == {e.device} and f["mode"] == mode for f in fleets):
                    continue
                f, fnotes = solve_and_verify(mode_options(mode, e.device), mode, f"{e.device} only ({mode})")
                notes.extend(fnotes)
                if f is None:
                    if mode == best_mode:
                        notes.append(f"{e.device} alone cannot serve {rate:g} req/s within the SLOs "
                                     f"with {e.count} devices ({mode})")
                else:
                    fleets.append(f)
    if pareto:  # more capacity than needed: lower latency for more money
        for scale in (1.5, 2.0):
            solve_and_verify(mode_options(best_mode), best_mode, f"{scale}x capacity", scale)
    fleets.sort(key=lambda f: (not f["meets_slo"], f["cost_per_hour"]))
    for k, f in enumerate(fleets, 1):
        f["rank"] = k
    return {
        "model": model.name, "rate_req_per_s": rate, "disagg": disagg,
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s, "percentile": percentile},
        "workload": {"prompt_len": workload.prompt_len.text, "output_len": workload.output_len.text,
                     "requests_per_probe": requests, "seed": seed},
        "pool": [{"device": e.device, "count": e.count, "price_per_hour": e.price_per_hour} for e in pool],
        "capacities": [c.to_dict() for c in caps] + [
            {**c.to_dict(), "size_class": j, "prompt_len": size[j][2].text}
            for j, cc in enumerate(class_caps) for c in cc],
        "size_classes": [{"max_prompt_len": b, "share": sh, "prompt_len": d.text} for b, sh, d in size] or None,
        "kv_transfer_bytes_per_s": kv_rate if "disaggregated" in modes else None,
        "fleets": [{**f, "validation": serving_fleet_validation(
            model, engine, [r["device"] for r in f["replicas"]], "agg" if f["mode"] == "aggregated" else "disagg")}
            for f in fleets],
        "pareto": pareto_front(verified, pk),
        "search_time_s": time.perf_counter() - t0,
        "solver": {"status": fleets[0]["solver_status"], "time_limit_s": time_limit_s, "gap": gap,
                   "optimal": fleets[0]["solver_optimal"]},
        "solver_status": fleets[0]["solver_status"],
        "notes": notes,
    }


def pareto_front(fleets: list, pk: str) -> list:
    """The verified fleets that meet the SLOs and that no other such fleet beats on cost, TTFT
    and TPOT at once (the SLO percentile), cheapest first."""
    pts, seen = [], set()
    for f in fleets:
        key = (round(f["cost_per_hour"], 6), _describe_doc(f))
        if not f["meets_slo"] or key in seen:
            continue
        seen.add(key)
        pts.append(f)

    def dominated(a, b):  # b dominates a
        va = (a["cost_per_hour"], a["predicted"]["ttft_s"], a["predicted"]["tpot_s"])
        vb = (b["cost_per_hour"], b["predicted"]["ttft_s"], b["predicted"]["tpot_s"])
        return all(y <= x for x, y in zip(va, vb)) and vb != va
    front = [a for a in pts if not any(dominated(a, b) for b in pts)]
    front.sort(key=lambda f: f["cost_per_hour"])
    return [{"cost_per_hour": f["cost_per_hour"], "mode": f["mode"], "replicas": _describe_doc(f),
             "ttft_s": f["predicted"]["ttft_s"], "tpot_s": f["predicted"]["tpot_s"], "percentile": pk,
             "headroom": f["headroom"]} for f in front]


def _describe(counts: dict) -> str:
    return " + ".join(f"{k}×{n}" for n, k in sorted(counts.items()))


def _describe_doc(f: dict) -> str:
    return " + ".join(f"{r['count']}× {r['device']} tp={r['tp']}" + ("" if r["role"] == "both" else f" {r['role']}")
                      for r in f["replicas"])


def _fleet_doc(sol: FleetSolution, rep, by_cap: dict, rate: float, pk: str, ok: bool,
               slo_ttft_s: float, slo_tpot_s: float, mode: str) -> dict:
    reps = []
    for name, k in sorted(sol.counts.items(), key=lambda kv: (by_cap[kv[0]].role == "decode", kv[0])):
        c = by_cap[name]
        reps.append({"device": c.device, "tp": c.tp, "role": c.role, "count": k, "rate_per_replica": c.rate})
    return {
        "mode": mode,
        "cost_per_hour": sol.cost_per_hour,
        "replicas": reps,
        "num_devices": sum(r["tp"] * r["count"] for r in reps),
        "capacity_req_per_s": sol.capacity,
        "ttft_s": rep.ttft_s, "tpot_s": rep.tpot_s,
        "tokens_per_s_per_device": rep.tokens_per_s_per_device,
        "slo_attainment": rep.slo_attainment,
        "headroom": sol.capacity / rate - 1.0,
        "predicted": {"ttft_s": rep.ttft_s.get(pk), "tpot_s": rep.tpot_s.get(pk), "percentile": pk},
        "required": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s},
        "meets_slo": ok,
        "solver_status": sol.status,
        "solver_optimal": sol.optimal,
        "solver_gap": sol.gap,
        "solver_time_limit_s": sol.time_limit_s,
        "solve_time_s": sol.solve_time_s,
    }
