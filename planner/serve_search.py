"""Cost-optimal serving fleets (`clusterplan plan serve`; DESIGN.md §4, MODELING.md "Serving:
Mélange"; issue #7).

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

DEFAULT_TIME_LIMIT_S = 5.0
DEFAULT_GAP = 0.0
TPS = (1, 2, 4, 8)
PERCENTILES = {50: "p50", 90: "p90", 99: "p99"}
_CAPACITY_CACHE: dict = {}


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

@dataclass
class Capacity:
    """One configuration's sustainable rate per replica under the SLOs (0 when none)."""
    device: str
    tp: int
    rate: float  # requests/s per replica within the SLOs
    ttft_floor_s: float  # SLO-percentile TTFT at a near-zero rate (requests alone)
    tpot_floor_s: float
    probes: list = field(default_factory=list)  # (rate, ttft, tpot, ok)
    note: str | None = None

    def to_dict(self) -> dict:
        return {"device": self.device, "tp": self.tp, "rate_per_replica": self.rate,
                "ttft_floor_s": self.ttft_floor_s, "tpot_floor_s": self.tpot_floor_s,
                "probes": len(self.probes), "note": self.note}


def _plan(groups, engine, dtype, kv_dtype, router="least_outstanding"):
    from simulator.serving.engine import ServingPlan
    return ServingPlan(tuple(groups), engine=engine, router=router, dtype=dtype, kv_dtype=kv_dtype)


def _metrics(rep, pk: str):
    ttft, tpot = rep.ttft_s.get(pk), rep.tpot_s.get(pk)
    ttft = math.inf if ttft is None or not math.isfinite(ttft) else ttft
    tpot = 0.0 if tpot is None or (isinstance(tpot, float) and math.isnan(tpot)) else tpot
    return ttft, tpot


def _steady(requests, growth: float = 1.5) -> bool:
    """False when the queue grows through the run (the rate is not sustainable, however short the
    run): mean TTFT of the last fifth of arrivals > growth × that of the second fifth plus the
    smallest TTFT seen (a short probe at an overload rate can still meet a loose TTFT SLO)."""
    reqs = sorted((r for r in requests if math.isfinite(r.first_token_s)), key=lambda r: r.arrival_s)
    n = len(reqs)
    if n < 10:
        return True
    ttft = [r.first_token_s - r.arrival_s for r in reqs]
    early = sum(ttft[n // 5: 2 * n // 5]) / max(1, 2 * n // 5 - n // 5)
    late = sum(ttft[4 * n // 5:]) / max(1, n - 4 * n // 5)
    return late <= growth * early + min(ttft)


def replica_capacity(model, cluster, tp: int, workload, slo_ttft_s: float, slo_tpot_s: float,
                     percentile: int = 90, requests: int = 400, seed: int = 0, engine: str = "vllm",
                     dtype: str = "bf16", kv_dtype: str | None = None, iterations: int = 7) -> Capacity:
    """Bisection on the open-loop rate of one replica (tp devices of `cluster`): the highest rate
    whose probe keeps the `percentile` TTFT ≤ slo_ttft_s and TPOT ≤ slo_tpot_s with every request
    served. The probe at 1e-3 req/s gives the floors (a config whose floors miss the SLO has rate 0).
    Raises nothing for a model that does not fit: rate 0 with the reason in `note`."""
    from simulator.serving.engine import ReplicaGroup, ServingSimulation
    from simulator.serving.workload import RateSchedule
    pk = PERCENTILES[percentile]
    key = (model.name, model, cluster.name, cluster.device.name, tp, workload.prompt_len,
           workload.output_len, workload.arrival_cv, workload.shared_prefix, slo_ttft_s, slo_tpot_s,
           percentile, requests, seed, engine, dtype, kv_dtype, iterations)
    try:
        hit = _CAPACITY_CACHE.get(key)
    except TypeError:  # an unhashable model spec: no caching
        key, hit = None, None
    if hit is not None:
        return hit
    plan = _plan([ReplicaGroup(cluster, tp)], engine, dtype, kv_dtype)
    probes = []

    def probe(rate):
        wl = replace(workload, rate=RateSchedule(((rate, math.inf),)), num_requests=requests,
                     seed=seed, concurrency=0, trace=None, warmup_requests=0,
                     slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
        sim = ServingSimulation(model, plan, wl)
        rep = sim.run()
        ttft, tpot = _metrics(rep, pk)
        ok = (rep.rejected == 0 and rep.completed == requests
              and ttft <= slo_ttft_s and tpot <= slo_tpot_s and _steady(sim.requests))
        probes.append((rate, ttft, tpot, ok))
        return ok, ttft, tpot

    try:
        ok, ttft0, tpot0 = probe(1e-3)
    except InputError as e:
        cap = Capacity(cluster.device.name, tp, 0.0, math.inf, math.inf, probes, note=str(e))
    else:
        if not ok:
            cap = Capacity(cluster.device.name, tp, 0.0, ttft0, tpot0, probes)
        else:
            lo, hi = 1e-3, 1.0
            for _ in range(16):  # grow until a probe fails
                if not probe(hi)[0]:
                    break
                lo, hi = hi, hi * 2
            else:
                hi = None
            if hi is not None:
                for _ in range(iterations):
                    mid = (lo + hi) / 2
                    if probe(mid)[0]:
                        lo = mid
                    else:
                        hi = mid
            cap = Capacity(cluster.device.name, tp, lo, ttft0, tpot0, probes)
    if key is not None:
        _CAPACITY_CACHE[key] = cap
    return cap


# ---- step 2: the fleet ILP and its brute-force twin -----------------------------------------

@dataclass(frozen=True)
class Option:
    """A replica configuration for the ILP: `devices` devices of type `group` serve `rate` req/s
    and cost `price` USD per device-hour."""
    name: str
    group: str
    devices: int
    rate: float
    price: float

    @property
    def cost(self) -> float:
        return self.devices * self.price


@dataclass
class FleetSolution:
    counts: dict  # option name → replicas (> 0 only)
    cost_per_hour: float
    capacity: float
    status: str
    optimal: bool
    solve_time_s: float = 0.0


def fleet_ilp(options: list[Option], required_rate: float, available: dict,
              time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = DEFAULT_GAP) -> FleetSolution | None:
    """The program in the module docstring. None when infeasible (see `explain_infeasible`)."""
    if not (time_limit_s > 0):
        raise InputError(f"solver time limit {time_limit_s!r} must be a positive number of seconds")
    if not (0 <= gap < 1):
        raise InputError(f"solver gap {gap!r} must be a relative gap in [0, 1)")
    opts = [o for o in options if o.rate > 0 and o.devices <= available.get(o.group, 0)]
    if not opts:
        return None
    prob = pulp.LpProblem("serving_fleet", pulp.LpMinimize)
    n = {i: pulp.LpVariable(f"replicas_{i}", lowBound=0, upBound=available[o.group] // o.devices,
                            cat="Integer") for i, o in enumerate(opts)}
    prob += pulp.lpSum(o.cost * n[i] for i, o in enumerate(opts)), "cost_per_hour"
    prob += pulp.lpSum(o.rate * n[i] for i, o in enumerate(opts)) >= required_rate, "capacity"
    for g in sorted({o.group for o in opts}):
        prob += (pulp.lpSum(o.devices * n[i] for i, o in enumerate(opts) if o.group == g)
                 <= available[g], f"devices_{g}")
    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap)
    t0 = time.perf_counter()
    prob.solve(solver)
    dt = time.perf_counter() - t0
    sol = prob.sol_status
    if sol not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None
    counts = {}
    for i, o in enumerate(opts):
        k = int(round(n[i].value() or 0))
        if k:
            counts[o.name] = counts.get(o.name, 0) + k
    by = {o.name: o for o in opts}
    cost = sum(by[k].cost * v for k, v in counts.items())
    cap = sum(by[k].rate * v for k, v in counts.items())
    status = pulp.LpStatus[prob.status] if sol == pulp.LpSolutionOptimal else "time limit (not proven optimal)"
    return FleetSolution(counts, cost, cap, status, sol == pulp.LpSolutionOptimal, dt)


def fleet_brute_force(options: list[Option], required_rate: float, available: dict) -> FleetSolution | None:
    """Every integer vector n within the device limits; the cheapest meeting the capacity (small
    instances only: the product of (available // devices + 1) over the options)."""
    opts = [o for o in options if o.rate > 0 and o.devices <= available.get(o.group, 0)]
    best = None
    for ns in itertools.product(*[range(available[o.group] // o.devices + 1) for o in opts]):
        use = {}
        for o, k in zip(opts, ns):
            use[o.group] = use.get(o.group, 0) + o.devices * k
        if any(v > available[g] for g, v in use.items()):
            continue
        cap = sum(o.rate * k for o, k in zip(opts, ns))
        if cap < required_rate - 1e-9:
            continue
        cost = sum(o.cost * k for o, k in zip(opts, ns))
        if best is None or cost < best.cost_per_hour - 1e-9:
            best = FleetSolution({o.name: k for o, k in zip(opts, ns) if k}, cost, cap, "Optimal", True)
    return best


def explain_infeasible(caps: list[Capacity], pool: list[PoolEntry], required_rate: float,
                       slo_ttft_s: float, slo_tpot_s: float, percentile: int) -> InputError:
    """A one-line InputError naming the binding constraint."""
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


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    return f"{s:g}s" if s >= 1 else f"{s * 1e3:.3g}ms"


# ---- step 3: verification and the whole search ----------------------------------------------

def verify_fleet(model, clusters: dict, counts: dict, tps: dict, workload, rate: float,
                 slo_ttft_s: float, slo_tpot_s: float, percentile: int, requests: int, seed: int,
                 engine: str, dtype: str, kv_dtype):
    """Simulate the whole fleet (mixed device types, least-outstanding router) at `rate`."""
    from simulator.serving.engine import ReplicaGroup, simulate
    from simulator.serving.workload import RateSchedule
    groups = [ReplicaGroup(clusters[dev], tps[name], count=k) for name, k in sorted(counts.items())
              for dev in [name.split("/")[0]]]
    plan = _plan(groups, engine, dtype, kv_dtype)
    wl = replace(workload, rate=RateSchedule(((rate, math.inf),)), num_requests=requests, seed=seed,
                 concurrency=0, trace=None, warmup_requests=0, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    return simulate(model, plan, wl)


def option_name(device: str, tp: int) -> str:
    return f"{device}/tp{tp}"


def plan_serving(model, pool: list[PoolEntry], workload, rate: float, slo_ttft_s: float,
                 slo_tpot_s: float, percentile: int = 90, requests: int = 400, seed: int = 0,
                 engine: str = "vllm", dtype: str = "bf16", kv_dtype: str | None = None,
                 time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = DEFAULT_GAP,
                 single_type: bool = True, max_retries: int = 4) -> dict:
    """The `plan serve` document: capacities, the cheapest fleet (and the cheapest single-type fleet
    per device type for comparison when `single_type`), each verified by simulation."""
    if percentile not in PERCENTILES:
        raise InputError(f"SLO percentile {percentile!r}; valid: {', '.join(map(str, PERCENTILES))}")
    if not (rate > 0 and math.isfinite(rate)):
        raise InputError(f"--rate {rate!r} must be a positive number of requests/s")
    t0 = time.perf_counter()
    pk = PERCENTILES[percentile]
    clusters, notes, caps = {}, [], []
    for e in pool:
        c, note = cluster_for_device(e.device)
        c.device.peak(dtype)  # dtype unsupported on this device → InputError
        clusters[e.device] = c
        if note:
            notes.append(note)
        for tp in TPS:
            if tp > c.devices_per_node or tp > e.count:
                continue
            caps.append(replica_capacity(model, c, tp, workload, slo_ttft_s, slo_tpot_s, percentile,
                                         requests, seed, engine, dtype, kv_dtype))
    price = {e.device: e.price_per_hour for e in pool}
    available = {e.device: e.count for e in pool}
    options = [Option(option_name(c.device, c.tp), c.device, c.tp, c.rate, price[c.device]) for c in caps]
    tps = {o.name: o.devices for o in options}
    by_cap = {option_name(c.device, c.tp): c for c in caps}

    def solve_and_verify(opts, label):
        need, fleet_notes = rate, []
        for attempt in range(max_retries + 1):
            sol = fleet_ilp(opts, need, available, time_limit_s, gap)
            if sol is None:
                return None, fleet_notes
            nrep = sum(sol.counts.values())
            rep = verify_fleet(model, clusters, sol.counts, tps, workload, rate, slo_ttft_s, slo_tpot_s,
                               percentile, max(requests, min(5000, 100 * nrep)), seed, engine, dtype, kv_dtype)
            ttft, tpot = _metrics(rep, pk)
            ok = ttft <= slo_ttft_s and tpot <= slo_tpot_s and rep.rejected == 0
            if ok or attempt == max_retries:
                if not ok:
                    fleet_notes.append(f"{label}: still misses the SLO after {max_retries} re-solves")
                return _fleet_doc(sol, rep, by_cap, rate, pk, ok, slo_ttft_s, slo_tpot_s, fleet_notes), fleet_notes
            fleet_notes.append(f"{label}: {_describe(sol.counts)} missed the SLO in simulation "
                               f"({pk} TTFT {_fmt_s(ttft)}, TPOT {_fmt_s(tpot)}); re-solved for more capacity")
            need = sol.capacity * 1.0001 + 1e-6  # the next solution: strictly more capacity
        return None, fleet_notes

    best, fnotes = solve_and_verify(options, "cheapest fleet")
    notes.extend(fnotes)
    if best is None:
        raise explain_infeasible(caps, pool, rate, slo_ttft_s, slo_tpot_s, percentile)
    fleets = [best]
    if single_type and len(pool) > 1:
        for e in pool:
            if {r["device"] for r in best["replicas"]} == {e.device}:
                continue
            f, fnotes = solve_and_verify([o for o in options if o.group == e.device], f"{e.device} only")
            notes.extend(fnotes)
            if f is None:
                notes.append(f"{e.device} alone cannot serve {rate:g} req/s within the SLOs "
                             f"with {e.count} devices")
            else:
                fleets.append(f)
        fleets.sort(key=lambda f: (not f["meets_slo"], f["cost_per_hour"]))
    return {
        "model": model.name, "rate_req_per_s": rate,
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s, "percentile": percentile},
        "workload": {"prompt_len": workload.prompt_len.text, "output_len": workload.output_len.text,
                     "requests_per_probe": requests, "seed": seed},
        "pool": [{"device": e.device, "count": e.count, "price_per_hour": e.price_per_hour} for e in pool],
        "capacities": [c.to_dict() for c in caps],
        "fleets": fleets,
        "search_time_s": time.perf_counter() - t0,
        "solver_status": fleets[0]["solver_status"],
        "notes": notes,
    }


def _describe(counts: dict) -> str:
    return " + ".join(f"{k}×{n}" for n, k in sorted(counts.items()))


def _fleet_doc(sol: FleetSolution, rep, by_cap: dict, rate: float, pk: str, ok: bool,
               slo_ttft_s: float, slo_tpot_s: float, notes: list) -> dict:
    reps = []
    for name, k in sorted(sol.counts.items()):
        c = by_cap[name]
        reps.append({"device": c.device, "tp": c.tp, "count": k, "rate_per_replica": c.rate})
    return {
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
        "solve_time_s": sol.solve_time_s,
    }
