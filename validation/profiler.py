"""Kernel profiler: measures the kernels the validation model executes on this machine and writes
a profile folder in our own schema (validation/data/profiles/README.md; read back by
hwmodels/own_profiles.py and `KernelModel.from_profile`).

    clusterplan validate profile --device cpu --out validation/data/profiles/NAME [--quick]

Every op is timed as the model calls it (validation/gpt.py's functions and modules): warm-up
calls, then repeated calls until a minimum time and count are reached, and the median is kept.
CPU thread count is fixed (torch.set_num_threads) and stamped. Collectives run in several local
processes (gloo on CPU, NCCL on GPU) started by validation/harness.py's process manager, which
never leaves children behind. torch is imported inside the functions.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import statistics
import subprocess
import time

from hwmodels.errors import InputError
from hwmodels.fileio import write_json_atomic, write_text_atomic
from hwmodels.own_profiles import SCHEMA

DEFAULT_DTYPES = {"cpu": ("fp32",), "cuda": ("bf16", "fp16")}
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# ---- grids ------------------------------------------------------------------------------------
def grids(device: str, quick: bool) -> dict:
    """Shapes measured. Quick CPU grids cover small GPT models (hidden up to 1024, vocab up to
    32k, seq up to 512) in well under a minute on 2 cores; GEMMs above `gemm_max_flops` are
    skipped and filled from the grid's edge rate."""
    if device == "cuda":
        p2 = lambda a, b: [2 ** i for i in range(a, b + 1)]  # noqa: E731
        return dict(gemm_m=p2(0, 14), gemm_nk=p2(7, 14), gemm_max_flops=float("inf"),
                    attn_batch=[1, 4, 16], attn_heads=[8, 32], attn_seq=p2(7, 13) if not quick else p2(7, 11),
                    head_dims=[64, 128], decode_batch=[1, 8, 64], decode_kv=p2(7, 14),
                    ew_rows=p2(0, 16)[::2], ew_cols=[1024, 4096, 16384], vocab=[32768, 131072],
                    adam_rows=[1, 16, 128], adam_cols=[4096, 2 ** 20, 2 ** 24],
                    copy_bytes=[2 ** i for i in range(12, 32, 2)],
                    coll_bytes=[2 ** i for i in range(12, 30, 2)], coll_ops=("all_reduce", "all_gather"),
                    ew_max_elems=2 ** 28, min_time=0.01, min_reps=5 if quick else 20)
    if quick:
        return dict(gemm_m=[1, 4, 16, 64, 256, 512, 1024], gemm_nk=[256, 512, 1024, 2048, 4096],
                    gemm_max_flops=1.1e9, attn_batch=[1, 4], attn_heads=[8], attn_seq=[64, 128, 256, 512],
                    head_dims=[32, 64, 128], decode_batch=[1, 4, 16], decode_kv=[64, 128, 256, 512],
                    ew_rows=[1, 16, 256, 1024, 4096], ew_cols=[256, 1024, 4096], vocab=[4096, 32768],
                    adam_rows=[1, 16, 64], adam_cols=[256, 16384, 262144],
                    copy_bytes=[2 ** i for i in range(10, 27, 2)],
                    coll_bytes=[2 ** i for i in range(10, 26, 3)], coll_ops=("all_reduce",),
                    ew_max_elems=2 ** 22, min_time=0.01, min_reps=5)
    return dict(gemm_m=[2 ** i for i in range(0, 13)], gemm_nk=[128, 256, 512, 1024, 2048, 4096, 8192],
                gemm_max_flops=2e10, attn_batch=[1, 4, 16], attn_heads=[8, 16], attn_seq=[64, 128, 256, 512, 1024],
                head_dims=[32, 64, 128], decode_batch=[1, 4, 16, 64], decode_kv=[64, 128, 256, 512, 1024, 2048],
                ew_rows=[1, 4, 16, 64, 256, 1024, 4096, 16384], ew_cols=[256, 1024, 4096, 16384],
                vocab=[4096, 32768, 131072], adam_rows=[1, 16, 64, 256], adam_cols=[256, 16384, 262144, 2 ** 22],
                copy_bytes=[2 ** i for i in range(10, 31)], coll_bytes=[2 ** i for i in range(10, 28)],
                coll_ops=("all_reduce", "all_gather", "broadcast"), ew_max_elems=2 ** 26,
                min_time=0.05, min_reps=10)


# ---- machine stamp ----------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _sched_policy() -> str:
    """Scheduling policy of this process (a run under `chrt -f` says fifo)."""
    try:
        pol = os.sched_getscheduler(0)
    except (OSError, AttributeError):
        return "unknown"
    names = {getattr(os, n): n[6:].lower() for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR",
                                                      "SCHED_BATCH", "SCHED_IDLE") if hasattr(os, n)}
    return names.get(pol, str(pol))


def machine_stamp(device: str, threads: int) -> dict:
    """What was measured on: device, driver, torch/CUDA versions, CPU model, threads, date."""
    import numpy
    import torch

    stamp = {
        "device": device, "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
        "ram_bytes": _ram_bytes(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(), "numpy": numpy.__version__,
        "platform": platform.platform(), "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "driver": None, "sched_policy": _sched_policy(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        stamp.update(device_name=props.name, vendor="nvidia", memory_bytes=props.total_memory,
                     driver=_nvidia_driver(), gpu_count=torch.cuda.device_count())
    else:
        stamp.update(device_name=stamp["cpu_model"], vendor=stamp["cpu_model"].split()[0] if stamp["cpu_model"] else "",
                     memory_bytes=stamp["ram_bytes"], driver=f"linux {platform.release()}")
    return stamp


def check_device(device: str):
    """InputError unless torch is installed and `device` is usable."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}; valid: cpu, cuda")
    try:
        import torch
    except ImportError:
        raise InputError("torch is not installed: pip install torch==2.13.0 "
                         "(or pip install -e '.[validation]')") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch


# ---- timing -----------------------------------------------------------------------------------
class Timer:
    """Median seconds of one call of `fn` after warm-up; on CUDA, calls are timed in groups
    between synchronisations so that launch latency does not dominate."""

    def __init__(self, torch, device: str, min_time: float, min_reps: int, warmup: int = 2):
        self.torch, self.cuda = torch, device == "cuda"
        self.min_time, self.min_reps, self.warmup = min_time, min_reps, warmup

    def __call__(self, fn) -> float:
        sync = self.torch.cuda.synchronize if self.cuda else (lambda: None)
        for _ in range(self.warmup):
            fn()
        sync()
        group = 1
        if self.cuda:
            t0 = time.perf_counter()
            fn()
            sync()
            group = max(1, min(100, int(1e-3 / max(time.perf_counter() - t0, 1e-7))))
        times, total = [], 0.0
        while (len(times) < self.min_reps or total < self.min_time) and len(times) < 1000:
            t0 = time.perf_counter()
            for _ in range(group):
                fn()
            sync()
            dt = time.perf_counter() - t0
            times.append(dt / group)
            total += dt
        return statistics.median(times)


# ---- measurements -----------------------------------------------------------------------------
def llc_bytes() -> int:
    """Bytes of the last-level cache (sysfs; the largest cache of cpu0), 32 MiB if unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            with open(os.path.join(base, idx, "size")) as f:
                size = f.read().strip()
            mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(size[-1:], 1)
            best = max(best, int(size.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or 32 * 2 ** 20


class ColdOperands:
    """Operands carved from one random pool of twice the last-level cache: successive calls take
    the next slices, so a kernel reads its weights (or KV cache) from memory, as a model does
    whose weights exceed the cache (any LLM; the validation model is sized so). One pool per
    profile: carving a view costs nothing."""

    def __init__(self, torch, dev, td, cold: bool):
        self.torch, self.dev, self.td = torch, dev, td
        n = (2 * llc_bytes()) // (torch.finfo(td).bits // 8) if cold else 0
        self.pool = torch.randn(max(n, 1), device=dev, dtype=td)
        self.cold = cold

    def sets(self, shapes: list[tuple]) -> list[list]:
        """Lists of tensors of `shapes`, as many sets as fit in the pool (at least one)."""
        sizes = [int(math.prod(sh)) for sh in shapes]
        per = sum(sizes)
        if not self.cold or per > self.pool.numel():
            return [[self.torch.randn(sh, device=self.dev, dtype=self.td) for sh in shapes]]
        out = []
        for i in range(self.pool.numel() // per):
            off, ts = i * per, []
            for sh, n in zip(shapes, sizes):
                ts.append(self.pool[off:off + n].view(sh))
                off += n
            out.append(ts)
        return out


def _gemm(torch, timer, dev, dtype, g, call_s=0.0) -> list[dict]:
    F = torch.nn.functional
    rows = []
    td = getattr(torch, TORCH_DTYPES[dtype])
    pool = ColdOperands(torch, dev, td, cold=dev == "cpu")
    with torch.inference_mode():
        for n in g["gemm_nk"]:
            for k in g["gemm_nk"]:
                for m in g["gemm_m"]:
                    if 2.0 * m * n * k > g["gemm_max_flops"]:
                        continue
                    sets = pool.sets([(m, k), (n, k), (n,)])
                    for bias in (0, 1):
                        it = iter(range(1 << 62))

                        def call():
                            x, W, b = sets[next(it) % len(sets)]
                            return F.linear(x, W, b if bias else None)
                        rows.append(dict(dtype=dtype, bias=bias, m=m, n=n, k=k, time_s=timer(call)))
    return rows


def _grad_timer(torch, timer, call_s: float = 0.0):
    """(fwd seconds, bwd seconds) of y = f(*inputs): forward without autograd, and the backward
    as (forward + backward with autograd) − forward − the fixed cost of one backward call
    (`call_s`, overhead.csv `backward_call`: a training step pays it once, not per op)."""
    def measure(f, inputs, params=()):
        with torch.no_grad():
            fwd = timer(lambda: f(*inputs))
        leaves = [t for t in inputs if t.requires_grad] + list(params)
        y = f(*inputs)
        g = torch.randn_like(y)

        def both():
            out = f(*inputs)
            torch.autograd.grad(out, leaves, g)
        fb = timer(both)
        return fwd, max(fb - fwd - call_s, 0.0)
    return measure


def _attention(torch, timer, dev, dtype, g, call_s) -> list[dict]:
    from validation.gpt import attention_core

    td = getattr(torch, TORCH_DTYPES[dtype])
    measure = _grad_timer(torch, timer, call_s)
    rows = []
    for d in g["head_dims"]:
        for H in g["attn_heads"]:
            for B in g["attn_batch"]:
                for s in g["attn_seq"]:
                    qkv = torch.randn(B, s, 3 * H * d, device=dev, dtype=td, requires_grad=True)
                    fwd, bwd = measure(lambda x: attention_core(x, H, H, d), [qkv])
                    rows.append(dict(dtype=dtype, kind="prefill", batch=B, heads=H, kv_heads=H, head_dim=d,
                                     seq_q=s, seq_kv=s, fwd_s=fwd, bwd_s=bwd))
            pool = ColdOperands(torch, dev, td, cold=dev == "cpu")
            with torch.inference_mode():
                for B in g["decode_batch"]:
                    L_max = max(g["decode_kv"])
                    # KV caches from the cold pool: a model's other layers evict each layer's cache
                    caches = pool.sets([(B, H, L_max, d), (B, H, L_max, d)])
                    qkv = torch.randn(B, 1, 3 * H * d, device=dev, dtype=td)
                    for L in g["decode_kv"]:
                        it = iter(range(1 << 62))
                        t = timer(lambda: attention_core(qkv, H, H, d, None, caches[next(it) % len(caches)], L - 1))
                        rows.append(dict(dtype=dtype, kind="decode", batch=B, heads=H, kv_heads=H, head_dim=d,
                                         seq_q=1, seq_kv=L, fwd_s=t, bwd_s=""))
    return rows


def _elementwise(torch, timer, dev, dtype, g, call_s) -> list[dict]:
    from torch import nn

    from validation.gpt import act, apply_rope, merge_heads, rope_tables

    F = torch.nn.functional
    td = getattr(torch, TORCH_DTYPES[dtype])
    measure = _grad_timer(torch, timer, call_s)
    rows = []
    cap = g["ew_max_elems"]

    def add(op, r, c, fwd, bwd=""):
        rows.append(dict(dtype=dtype, op=op, rows=r, cols=c, fwd_s=fwd, bwd_s=bwd))

    def x_(r, c, grad=True):
        return torch.randn(r, c, device=dev, dtype=td, requires_grad=grad)

    for c in g["ew_cols"]:
        ln = nn.LayerNorm(c).to(dev, td)
        rms = nn.RMSNorm(c, eps=1e-6).to(dev, td)
        for r in g["ew_rows"]:
            if r * c > cap:
                continue
            x = x_(r, c)
            add("layernorm", r, c, *measure(ln, [x], ln.parameters()))
            add("rmsnorm", r, c, *measure(rms, [x], rms.parameters()))
            add("gelu", r, c, *measure(lambda t: act(t, False), [x]))
            add("swiglu", r, c, *measure(lambda t: act(t, True), [x_(r, 2 * c)]))
            y = x_(r, c, grad=False)
            with torch.inference_mode():
                add("add", r, c, timer(lambda: x + y))
                add("sum_rows", r, c, timer(lambda: y.sum(0)))
            # (B, heads, s, 64) -> (B, s, heads·64) with B = 1, s = r
            yh = torch.randn(1, max(1, c // 64), r, 64 if c >= 64 else c, device=dev, dtype=td, requires_grad=True)
            add("merge_heads", r, c, *measure(merge_heads, [yh]))
            emb = nn.Embedding(max(1024, r), c).to(dev, td)
            idx = torch.randint(0, max(1024, r), (1, r), device=dev)
            add("embedding", r, c, *measure(lambda i: emb(i), [idx], emb.parameters()))
    for d in g["head_dims"]:
        cos, sin = rope_tables(max(g["ew_rows"]), d, device=dev, dtype=td)
        for r in g["ew_rows"]:
            x = torch.randn(1, 1, r, d, device=dev, dtype=td, requires_grad=True)
            add("rope", r, d, *measure(lambda t: apply_rope(t, cos[:r], sin[:r]), [x]))
    for V in g["vocab"]:
        for r in g["ew_rows"]:
            if r * V > cap:
                continue
            logits = x_(r, V)
            tgt = torch.randint(0, V, (r,), device=dev)
            add("cross_entropy", r, V, *measure(lambda lg: F.cross_entropy(lg, tgt), [logits]))
            with torch.inference_mode():
                lg = logits.detach()
                add("argmax", r, V, timer(lambda: lg.argmax(-1, keepdim=True)))
    for r in g["adam_rows"]:
        for c in g["adam_cols"]:
            params = [torch.zeros(c, device=dev, dtype=td, requires_grad=True) for _ in range(r)]
            for p in params:
                p.grad = torch.randn_like(p)
            opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
            add("adamw", r, c, timer(opt.step))
    return rows


def _overheads(torch, timer, dev, dtype) -> list[dict]:
    """Framework costs per call that no kernel table holds: a view op's dispatch, an nn.Module
    call around nothing, and one autograd node in a backward pass."""
    from torch import nn

    td = getattr(torch, TORCH_DTYPES[dtype])
    x = torch.randn(4, 8, device=dev, dtype=td)

    class Nothing(nn.Module):
        def forward(self, t):
            return t
    mod = Nothing()
    with torch.inference_mode():
        dispatch = timer(lambda: x.view(8, 4))
        module = timer(lambda: mod(x))

    def chain(n):
        leaf = torch.randn(4, 8, device=dev, dtype=td, requires_grad=True)

        def run():
            t = leaf
            for _ in range(n):
                t = t.view(8, 4).view(4, 8)
            torch.autograd.grad(t.sum(), [leaf])
        return timer(run)
    node = max(0.0, (chain(33) - chain(1)) / 64 - dispatch)
    leaf = torch.randn(4, 8, device=dev, dtype=td, requires_grad=True)
    g = torch.ones(8, 4, device=dev, dtype=td)
    call = max(0.0, timer(lambda: torch.autograd.grad(leaf.view(8, 4), [leaf], g)) - dispatch - node)
    return [dict(name="dispatch", time_s=dispatch), dict(name="module_call", time_s=module),
            dict(name="autograd_node", time_s=node), dict(name="backward_call", time_s=call)]


def _memory(torch, timer, dev, dtype, g, call_s=0.0) -> list[dict]:
    td = getattr(torch, TORCH_DTYPES[dtype])
    es = torch.finfo(td).bits // 8
    rows = []
    with torch.inference_mode():
        for nb in g["copy_bytes"]:
            src = torch.randn(max(1, nb // es), device=dev, dtype=td)
            dst = torch.empty_like(src)
            rows.append(dict(dtype=dtype, bytes=2 * src.numel() * es, time_s=timer(lambda: dst.copy_(src))))
    return rows


def collective_worker(rank: int, world: int, payload: dict, tmp: str) -> dict:
    """One rank of the collective benchmark (runs in a spawned process)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(payload["threads"])
    dev = payload["device"]
    if dev == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if dev == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    out = []
    try:
        warm = torch.ones(2 ** 18, device=dev)
        for _ in range(5):  # first calls set up the transport's connections
            dist.all_reduce(warm)
        sync()
        for op in payload["ops"]:
            for nb in payload["sizes"]:
                n = max(1, nb // 4)
                if op == "all_gather":
                    n = max(1, n // world)
                    t = torch.ones(n, device=dev)
                    outs = [torch.empty_like(t) for _ in range(world)]
                    fn = lambda: dist.all_gather(outs, t)  # noqa: E731
                    size = n * 4 * world  # nccl-tests: the output buffer
                else:
                    t = torch.ones(n, device=dev)
                    fn = (lambda: dist.all_reduce(t)) if op == "all_reduce" else (lambda: dist.broadcast(t, 0))
                    size = n * 4
                times, total = [], 0.0
                for i in range(payload["warmup"] + 1000):
                    dist.barrier()
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    dt = time.perf_counter() - t0
                    if i >= payload["warmup"]:
                        times.append(dt)
                        total += dt
                    # every rank stops at the same count: decide on rank 0's clock, broadcast
                    flag = torch.tensor([1 if (len(times) >= payload["min_reps"] and total >= payload["min_time"]) else 0],
                                        device=dev)  # NCCL moves CUDA tensors only
                    dist.broadcast(flag, 0)
                    if flag.item():
                        break
                out.append(dict(backend=backend, op=op, ranks=world, bytes=size, time_s=statistics.median(times)))
    finally:
        dist.destroy_process_group()
    return {"rows": out}


# ---- driver -----------------------------------------------------------------------------------
def profile(device: str = "cpu", out: str | None = None, quick: bool = False, threads: int = 1,
            ranks: int = 2, dtypes: tuple | None = None, log=print) -> dict:
    """Measure and write the profile folder `out`; returns its meta dictionary."""
    torch = check_device(device)
    if not out:
        raise InputError("--out is required (a folder, e.g. validation/data/profiles/my-machine)")
    if threads < 1:
        raise InputError(f"--threads={threads} must be >= 1")
    if ranks < 2:
        raise InputError(f"--ranks={ranks} must be >= 2 (collectives need two processes)")
    dtypes = tuple(dtypes or DEFAULT_DTYPES[device])
    for d in dtypes:
        if d not in TORCH_DTYPES:
            raise InputError(f"dtype {d!r}; valid: {', '.join(TORCH_DTYPES)}")
    if device == "cpu" and any(d != "fp32" for d in dtypes):
        raise InputError("--device cpu profiles fp32 only (CPU bf16/fp16 GEMMs are emulated on most CPUs)")
    if device == "cuda" and ranks > torch.cuda.device_count():
        log(f"note: {torch.cuda.device_count()} GPU(s) visible; NCCL collectives need {ranks}; skipped")
    g = grids(device, quick)
    from validation.harness import raise_priority
    old_nice = os.getpriority(os.PRIO_PROCESS, 0)
    niceness = raise_priority()  # restored below: the caller (a CLI, a test runner) keeps its own
    old_threads = torch.get_num_threads()
    try:
        return _profile(torch, device, out, quick, threads, ranks, dtypes, g, niceness, log)
    finally:
        torch.set_num_threads(old_threads)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, old_nice)
        except OSError:
            pass


def _profile(torch, device, out, quick, threads, ranks, dtypes, g, niceness, log) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    timer = Timer(torch, device, g["min_time"], g["min_reps"])
    tables = {"gemm.csv": [], "attention.csv": [], "elementwise.csv": [], "memory.csv": [],
              "overhead.csv": [], "collectives.csv": []}
    t_start = time.perf_counter()
    tables["overhead.csv"] = _overheads(torch, timer, device, dtypes[0])
    call_s = next(r["time_s"] for r in tables["overhead.csv"] if r["name"] == "backward_call")
    for dt in dtypes:
        for name, fn in (("gemm.csv", _gemm), ("attention.csv", _attention),
                         ("elementwise.csv", _elementwise), ("memory.csv", _memory)):
            t0 = time.perf_counter()
            tables[name] += fn(torch, timer, device, dt, g, call_s)
            log(f"  {name:<16} {dt}: {len(tables[name])} rows, {time.perf_counter() - t0:.1f} s")
    if device == "cpu" or ranks <= torch.cuda.device_count():
        from validation.harness import run_workers
        t0 = time.perf_counter()
        payload = dict(device=device, threads=threads, ops=list(g["coll_ops"]), sizes=g["coll_bytes"],
                       warmup=2, min_reps=g["min_reps"], min_time=g["min_time"])
        res = run_workers("validation.profiler:collective_worker", ranks, payload, threads=threads,
                          timeout_s=600)
        tables["collectives.csv"] = res[0]["rows"]
        log(f"  collectives.csv  {ranks} ranks: {len(tables['collectives.csv'])} rows, "
            f"{time.perf_counter() - t0:.1f} s")
    meta = {"schema": SCHEMA, **machine_stamp(device, threads), "dtypes": list(dtypes), "quick": quick,
            "statistic": "median", "min_time_s": g["min_time"], "min_reps": g["min_reps"],
            "collective_ranks": ranks, "niceness": niceness, "loadavg": list(os.getloadavg()),
            "profile_seconds": round(time.perf_counter() - t_start, 1),
            "tables": {k: len(v) for k, v in tables.items()}}
    os.makedirs(out, exist_ok=True)
    for name, rows in tables.items():
        write_csv(os.path.join(out, name), rows)
    write_json_atomic(os.path.join(out, "meta.json"), meta, indent=1)
    return meta


def write_csv(path: str, rows: list[dict]):
    """A CSV table, written atomically (hwmodels.fileio)."""
    import io
    fields = list(rows[0]) if rows else []
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())
