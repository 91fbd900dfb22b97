"""Real-run harness: trains the validation GPT (validation/gpt.py, built from a ModelSpec) for a
few steps with torch AdamW — one process, and data parallel over several local processes (DDP;
gloo on CPU, NCCL on GPU) — and runs an autoregressive decode loop with a KV cache at several
batch sizes. Medians of step / iteration times after warm-up go to a run folder:

    meta.json    machine stamp (validation.profiler.machine_stamp), model spec, run settings
    cases.csv    case,kind,ranks,batch,seq_len,kv_len,median_s,p10_s,p90_s,samples
    samples.json every timed step / iteration per case (decode: with its KV length)

Every case runs in spawned worker processes with a fixed thread count. Workers never outlive the
harness: the parent kills them on error, timeout, SIGINT/SIGTERM/SIGHUP and at exit; each worker
also asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG) and watches its parent
id. A case whose estimated memory exceeds the device's is refused before anything starts.
"""
from __future__ import annotations

import atexit
import csv
import ctypes
import dataclasses
import importlib
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass

from hwmodels.errors import InputError
from simulator.models import ModelSpec, megatron_gpt

GiB = 2 ** 30
# Resident memory of a worker before its model exists (python + torch + gloo), measured with
# /proc/self/status VmRSS on torch 2.13 CPU: ~330 MiB; rounded up.
WORKER_BASE_BYTES = 512 * 2 ** 20
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_ELEM = {"fp32": 4, "bf16": 2, "fp16": 2}


def default_model() -> ModelSpec:
    """The CI model: GPT-2 conventions (LayerNorm, GELU MLP of 4h, biases, learned positions,
    tied embeddings), 4 layers, hidden 512, 8 heads of 64, vocabulary 4096, 256 positions:
    14.9M parameters, 60 MB in fp32 — more than a server CPU's last-level cache, as any LLM's
    weights are, so decoding streams them from memory as the profile's cold GEMMs do."""
    return megatron_gpt("gpt-4l-512h", num_layers=4, hidden_size=512, num_heads=8, vocab_size=4096,
                        seq_len=256)


@dataclass(frozen=True)
class RunConfig:
    model: ModelSpec
    seq_len: int = 128
    batch: int = 4  # sequences per rank per step
    steps: int = 6  # timed steps after warm-up
    warmup: int = 4  # untimed first steps: the allocator reaches steady state after 3-4
    ranks: tuple = (1, 2)  # training cases: 1 = single process, n > 1 = DDP over n processes
    decode_batches: tuple = (1, 4, 16)
    prompt_len: int = 128
    gen_len: int = 24  # decode iterations per batch size; the first `warmup` are not timed
    threads: int = 1  # CPU threads per process (torch.set_num_threads)
    device: str = "cpu"
    dtype: str = "fp32"
    seed: int = 0
    timeout_s: float = 900.0

    def __post_init__(self):
        for k in ("seq_len", "batch", "steps", "prompt_len", "gen_len", "threads"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{k.replace('_', '-')}={v!r} must be a positive integer")
        if self.warmup < 0:
            raise InputError(f"warmup={self.warmup} must be >= 0")
        if self.gen_len <= self.warmup:
            raise InputError(f"gen-len={self.gen_len} must exceed warmup={self.warmup}")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"--device {self.device!r}; valid: cpu, cuda")
        if self.dtype not in _TORCH_DTYPES:
            raise InputError(f"dtype {self.dtype!r}; valid: {', '.join(_TORCH_DTYPES)}")
        if any(r < 1 for r in self.ranks) or any(b < 1 for b in self.decode_batches):
            raise InputError("ranks and decode batches must be positive integers")
        if self.model.learned_pos_embeddings:
            need = max(self.seq_len, self.prompt_len + self.gen_len)
            if need > self.model.learned_pos_embeddings:
                raise InputError(f"model {self.model.name!r} has {self.model.learned_pos_embeddings} "
                                 f"learned positions; seq-len / prompt-len + gen-len need {need}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = model_to_dict(self.model)
        d["ranks"], d["decode_batches"] = list(self.ranks), list(self.decode_batches)
        return d


def model_to_dict(spec: ModelSpec) -> dict:
    d = dataclasses.asdict(spec)
    d.pop("extra", None)
    return d


def model_from_dict(d: dict) -> ModelSpec:
    if not isinstance(d, dict):
        raise InputError(f"model {d!r} is not a mapping of ModelSpec fields")
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    try:
        return ModelSpec(**{k: v for k, v in d.items() if k in names and k != "extra"})
    except TypeError as e:  # a required field missing
        raise InputError(f"model {d.get('name')!r}: {e}") from None


def check_model(spec: ModelSpec) -> None:
    """The harness builds dense decoders with standard attention (validation/gpt.py)."""
    for field, why in (("num_experts", "MoE"), ("kv_lora_rank", "MLA"), ("qk_norm", "QK-norm"),
                       ("qkv_bias", "Q/K/V-only biases"), ("hybrid_pattern", "hybrid Mamba-2 layers")):
        if getattr(spec, field):
            raise InputError(f"model {spec.name!r}: {why} ({field}={getattr(spec, field)!r}) is not "
                             f"supported by the validation harness; use a dense model")


# ---- memory -----------------------------------------------------------------------------------
def train_bytes_per_rank(cfg: RunConfig) -> float:
    """Weights + gradients + AdamW moments (2) in the run dtype, stored activations of the
    forward (fused attention: no s×s scores), logits with their log-softmax and gradient, and
    the worker's runtime."""
    sp, e = cfg.model, _ELEM[cfg.dtype]
    T = cfg.batch * cfg.seq_len
    state = 4 * sp.num_params * e
    mlp_out = sp.ffn_hidden_size * (2 if sp.gated_mlp else 1)
    per_layer = T * e * (4 * sp.hidden_size + sp.q_dim + 2 * sp.kv_dim + 2 * sp.attn_out_dim
                         + mlp_out + sp.ffn_hidden_size * (2 if sp.gated_mlp else 1))
    logits = 3 * T * sp.vocab_size * 4
    return state + sp.num_layers * per_layer + logits + WORKER_BASE_BYTES


def decode_bytes(cfg: RunConfig) -> float:
    sp, e = cfg.model, _ELEM[cfg.dtype]
    b = max(cfg.decode_batches)
    L = cfg.prompt_len + cfg.gen_len
    kv = 2 * sp.num_layers * b * L * sp.kv_dim * e
    prefill = b * cfg.prompt_len * e * (sp.q_dim + 2 * sp.kv_dim + sp.ffn_hidden_size * 3 + 4 * sp.hidden_size)
    return sp.num_params * e + kv + prefill + b * sp.vocab_size * e + WORKER_BASE_BYTES


def available_bytes(device: str) -> float:
    """Memory a run may use: MemAvailable on CPU; free memory of GPU 0 on CUDA."""
    if device == "cuda":
        import torch
        return float(torch.cuda.mem_get_info(0)[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_fits(cfg: RunConfig, memory_limit: float | None = None) -> dict:
    """Bytes each case needs; InputError for the first case that does not fit."""
    limit = memory_limit if memory_limit is not None else available_bytes(cfg.device)
    where = "--memory-limit" if memory_limit is not None else \
        ("free GPU memory" if cfg.device == "cuda" else "available RAM (MemAvailable)")
    need = {}
    per_rank = train_bytes_per_rank(cfg)
    for r in cfg.ranks:
        # CPU ranks share the host's RAM; CUDA ranks each have their own GPU
        need[f"train_{r}p"] = per_rank * (r if cfg.device == "cpu" else 1)
    if cfg.decode_batches:
        need["decode"] = decode_bytes(cfg)
    for case, b in need.items():
        if b > limit:
            raise InputError(
                f"case {case!r} does not fit: it needs about {b / GiB:.2f} GiB (model "
                f"{cfg.model.name!r}, {cfg.model.num_params / 1e6:.1f}M params, batch {cfg.batch}, "
                f"seq {cfg.seq_len}) but the {cfg.device} has {limit / GiB:.2f} GiB ({where}); "
                f"reduce --batch, --seq-len, the decode batches or the model")
    return need


# ---- worker processes -------------------------------------------------------------------------
_LIVE: set = set()  # processes started by this module and not yet reaped


def _kill_all(procs) -> None:
    procs = [p for p in procs if p.pid is not None]  # started ones
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5.0)
        _LIVE.discard(p)


atexit.register(lambda: _kill_all(list(_LIVE)))


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies; everywhere: poll the parent id."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def raise_priority(niceness: int = -10) -> int:
    """Ask the scheduler to favour this process (and the threads it starts later) over other
    jobs on a shared machine: timing runs then see less of their noise. Needs root or
    CAP_SYS_NICE; silently keeps the current niceness otherwise. Returns the niceness in force."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except (OSError, AttributeError):
        pass
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return 0


def _entry(target: str, rank: int, world: int, payload: dict, tmp: str, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    niceness = raise_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the group
    try:
        mod, fn = target.split(":")
        result = getattr(importlib.import_module(mod), fn)(rank, world, payload, tmp)
        if isinstance(result, dict):
            result.setdefault("niceness", niceness)
        with open(os.path.join(tmp, f"rank{rank}.json.part"), "w") as f:
            json.dump(result, f)
        os.replace(os.path.join(tmp, f"rank{rank}.json.part"), os.path.join(tmp, f"rank{rank}.json"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit non-zero
        with open(os.path.join(tmp, f"rank{rank}.err"), "w") as f:
            f.write(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        sys.stdout.flush()
        os._exit(3)


def run_workers(target: str, world: int, payload: dict, threads: int = 1,
                timeout_s: float = 900.0) -> list[dict]:
    """Run `target` ("module:function", called as f(rank, world, payload, tmpdir) -> dict) in
    `world` spawned processes; returns their results by rank. Any failure, timeout or signal
    kills every worker before this returns or raises."""
    ctx = multiprocessing.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="clusterplan-run-")
    env_keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    for k in env_keys:  # workers read these when torch loads
        os.environ[k] = str(threads)
    procs = [ctx.Process(target=_entry, args=(target, r, world, payload, tmp, os.getpid()),
                         name=f"clusterplan-worker-{r}", daemon=True) for r in range(world)]
    old_handlers = {}
    main_thread = threading.current_thread() is threading.main_thread()

    def on_signal(signum, frame):
        _kill_all(procs)
        raise SystemExit(128 + signum) if signum != signal.SIGINT else KeyboardInterrupt()
    try:
        if main_thread:
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old_handlers[s] = signal.signal(s, on_signal)
        for p in procs:
            p.start()
            _LIVE.add(p)
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.exitcode for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r = failed[0]
                err_path = os.path.join(tmp, f"rank{r}.err")
                msg = open(err_path).read().splitlines()[0] if os.path.exists(err_path) \
                    else f"exit code {codes[r]}"
                raise RuntimeError(f"worker {r} of {world} ({target}) failed: {msg}")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers ({target}) did not finish within {timeout_s:.0f} s")
            procs[0].join(0.1)
        results = []
        for r in range(world):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                results.append(json.load(f))
        return results
    finally:
        _kill_all(procs)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def selftest_worker(rank: int, world: int, payload: dict, tmp: str) -> dict:
    """No torch: sleeps `payload["sleep"]` seconds; rank `payload.get("fail_rank")` raises. The
    tests use it to check that failures, timeouts and signals leave no process behind."""
    if rank == payload.get("fail_rank"):
        time.sleep(payload.get("fail_after", 0.0))
        raise ValueError(f"rank {rank} failed on purpose")
    time.sleep(payload.get("sleep", 0.0))
    return {"rank": rank, "pid": os.getpid()}


def _busy_ticks() -> int:
    """Busy CPU ticks of the whole machine (/proc/stat), 0 where unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return 0


class ForeignLoad:
    """Share of the machine's CPU capacity used by processes other than this one and its
    children while a case ran (other jobs on the machine inflate measured times)."""

    def __enter__(self):
        self.t0, self.b0, self.o0 = time.monotonic(), _busy_ticks(), self._own()
        return self

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __exit__(self, *exc):
        tick = os.sysconf("SC_CLK_TCK")
        wall = max(time.monotonic() - self.t0, 1e-9)
        busy = (_busy_ticks() - self.b0) / tick
        own = self._own() - self.o0
        self.fraction = max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))
        return False


# ---- the cases (run inside workers) -----------------------------------------------------------
def _setup(payload: dict, rank: int):
    import torch

    torch.set_num_threads(payload["threads"])
    torch.manual_seed(payload["seed"] + rank)
    dev = payload["device"]
    if dev == "cuda":
        torch.cuda.set_device(rank)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return torch, dev, getattr(torch, _TORCH_DTYPES[payload["dtype"]]), sync


def train_worker(rank: int, world: int, payload: dict, tmp: str) -> dict:
    """Train steps of the GPT: forward + cross-entropy, backward, fused AdamW step; DDP over
    `world` processes when world > 1 (gradients as bucket views: no copies)."""
    torch, dev, dtype, sync = _setup(payload, rank)
    import torch.distributed as dist

    from validation.gpt import GPT
    spec = model_from_dict(payload["model"])
    B, s = payload["batch"], payload["seq_len"]
    model = GPT(spec, max_len=s).to(dev, dtype)
    if world > 1:
        dist.init_process_group("nccl" if dev == "cuda" else "gloo", init_method=f"file://{tmp}/store",
                                rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rank] if dev == "cuda" else None, gradient_as_bucket_view=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    idx = torch.randint(0, spec.vocab_size, (B, s), device=dev)
    tgt = torch.randint(0, spec.vocab_size, (B, s), device=dev)
    times, losses = [], []
    try:
        for i in range(payload["warmup"] + payload["steps"]):
            if world > 1:
                dist.barrier()
            sync()
            t0 = time.perf_counter()
            loss = model(idx, tgt)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            dt = time.perf_counter() - t0
            losses.append(float(loss.detach()))
            if i >= payload["warmup"]:
                times.append(dt)
    finally:
        if world > 1:
            dist.destroy_process_group()
    return {"times": times, "losses": losses, "params": sum(p.numel() for p in model.parameters())}


def decode_worker(rank: int, world: int, payload: dict, tmp: str) -> dict:
    """Greedy decoding with a KV cache: prefill a random prompt, then one token per iteration
    for every sequence of the batch; each iteration's time with its KV length."""
    torch, dev, dtype, sync = _setup(payload, rank)
    from validation.gpt import GPT
    spec = model_from_dict(payload["model"])
    P, G = payload["prompt_len"], payload["gen_len"]
    model = GPT(spec, max_len=P + G).to(dev, dtype).eval()
    out = {}
    with torch.inference_mode():
        for b in payload["decode_batches"]:
            prompt = torch.randint(0, spec.vocab_size, (b, P), device=dev)
            for rep in range(2):  # the first pass warms up allocations at this batch size
                caches = model.new_caches(b, P + G)
                sync()
                t0 = time.perf_counter()
                tok = model(prompt, caches=caches, pos=0).argmax(-1, keepdim=True)
                sync()
                prefill = time.perf_counter() - t0
                iters = []
                for i in range(G if rep else payload["warmup"] + 2):
                    t0 = time.perf_counter()
                    tok = model(tok, caches=caches, pos=P + i).argmax(-1, keepdim=True)
                    sync()
                    iters.append((P + i + 1, time.perf_counter() - t0))
            out[str(b)] = {"prefill_s": prefill, "iters": iters[payload["warmup"]:]}
    return out


# ---- driver -----------------------------------------------------------------------------------
def run(cfg: RunConfig, out: str, memory_limit: float | None = None, log=print) -> dict:
    """Run every case of `cfg`, write the run folder `out`; returns {"meta", "cases"}."""
    from validation.profiler import check_device, machine_stamp

    check_model(cfg.model)
    if cfg.device == "cpu":  # refuse before anything heavy is imported or started
        need = check_fits(cfg, memory_limit)
    torch = check_device(cfg.device)
    if cfg.device == "cuda":
        if max(cfg.ranks) > torch.cuda.device_count():
            raise InputError(f"DDP over {max(cfg.ranks)} processes needs {max(cfg.ranks)} GPUs; "
                             f"{torch.cuda.device_count()} visible (NCCL runs one rank per GPU)")
        need = check_fits(cfg, memory_limit)
    payload = {k: v for k, v in cfg.to_dict().items() if k != "timeout_s"}
    cases, samples, niceness = [], {}, None
    for r in cfg.ranks:
        name = f"train_{r}p" if r == 1 else f"train_ddp_{r}p"
        t0 = time.perf_counter()
        with ForeignLoad() as load:
            res = run_workers("validation.harness:train_worker", r, payload, cfg.threads, cfg.timeout_s)
        steps = [max(rr["times"][i] for rr in res) for i in range(cfg.steps)]  # the slowest rank
        niceness = res[0].get("niceness")
        cases.append(_case(name, "train", r, cfg.batch, cfg.seq_len, 0, steps, load.fraction))
        samples[name] = {"step_s": steps, "loss": res[0]["losses"]}
        log(f"  {name:<16} median {statistics.median(steps) * 1e3:8.2f} ms  ({time.perf_counter() - t0:.1f} s, "
            f"other processes used {100 * load.fraction:.0f}% of the CPUs)")
    if cfg.decode_batches:
        t0 = time.perf_counter()
        with ForeignLoad() as load:
            res = run_workers("validation.harness:decode_worker", 1, payload, cfg.threads, cfg.timeout_s)[0]
        for b in cfg.decode_batches:
            d = res[str(b)]
            name = f"decode_b{b}"
            its = [t for _, t in d["iters"]]
            kv = sorted(L for L, _ in d["iters"])[len(d["iters"]) // 2]
            cases.append(_case(name, "decode", 1, b, cfg.prompt_len, kv, its, load.fraction))
            samples[name] = {"kv_len": [L for L, _ in d["iters"]], "iter_s": its, "prefill_s": d["prefill_s"]}
            log(f"  {name:<16} median {statistics.median(its) * 1e3:8.2f} ms")
        log(f"  decode total {time.perf_counter() - t0:.1f} s")
    meta = {"schema": "clusterplan-run/1", **machine_stamp(cfg.device, cfg.threads),
            "worker_niceness": niceness, "loadavg": list(os.getloadavg()),
            "config": cfg.to_dict(), "model_params": cfg.model.num_params, "memory_needed_bytes": need,
            "statistic": "median after warm-up; DDP steps: the slowest rank's time per step"}
    os.makedirs(out, exist_ok=True)
    from validation.profiler import write_csv
    write_csv(os.path.join(out, "cases.csv"), cases)
    from hwmodels.fileio import write_json_atomic
    write_json_atomic(os.path.join(out, "samples.json"), samples, indent=1)
    write_json_atomic(os.path.join(out, "meta.json"), meta, indent=1)  # last: a run folder is complete
    return {"meta": meta, "cases": cases}


def _case(name, kind, ranks, batch, seq, kv, times, foreign) -> dict:
    q = sorted(times)
    return dict(case=name, kind=kind, ranks=ranks, batch=batch, seq_len=seq, kv_len=kv,
                median_s=statistics.median(times), p10_s=q[int(0.1 * (len(q) - 1))],
                p90_s=q[int(round(0.9 * (len(q) - 1)))], samples=len(times),
                foreign_cpu=round(foreign, 3))


def load_run(path: str) -> tuple[dict, list[dict], dict]:
    """(meta, cases, samples) of a run folder."""
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise InputError(f"runs {path!r}: no meta.json there (make one with `clusterplan validate run "
                         f"--out {path}`)")
    where = f"runs {path!r}"
    meta = _read_json(meta_path, where)
    if not isinstance(meta, dict) or meta.get("schema") != "clusterplan-run/1":
        got = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{where}: schema {got!r}, expected 'clusterplan-run/1'")
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: meta.json config={cfg!r} must be a mapping (the RunConfig)")
    for key, typ in (("model", dict), ("dtype", str), ("device", str), ("threads", int)):
        if not isinstance(cfg.get(key), typ) or isinstance(cfg.get(key), bool):
            raise InputError(f"{where}: meta.json config.{key}={cfg.get(key)!r} must be a {typ.__name__}")
    cases = _read_cases(os.path.join(path, "cases.csv"), where)
    samples = {}
    sp = os.path.join(path, "samples.json")
    if os.path.isfile(sp):
        samples = _read_json(sp, where)
        if not isinstance(samples, dict) or not all(isinstance(v, dict) for v in samples.values()):
            raise InputError(f"{where}: samples.json must map case names to objects")
        for name, v in samples.items():
            kv = v.get("kv_len")
            if kv is not None and (not isinstance(kv, list) or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in kv)):
                raise InputError(f"{where}: samples.json {name}.kv_len must be a list of integers >= 1")
    return meta, cases, samples


# cases.csv columns: "str", "int" (>= 0), "pos" (> 0), "nonneg" (>= 0); "?" optional
_CASE_COLUMNS = {"case": "str", "kind": "str", "ranks": "int", "batch": "int", "seq_len": "int", "kv_len": "int",
                 "median_s": "pos", "p10_s": "pos", "p90_s": "pos", "samples": "int?", "foreign_cpu": "nonneg?"}


def _read_json(path: str, where: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{where}: {os.path.basename(path)} is unreadable ({e})") from None


def _read_cases(path: str, where: str) -> list[dict]:
    """cases.csv rows with numbers converted and checked (one-line InputError naming the cell)."""
    from hwmodels.own_profiles import read_typed_csv
    rows = read_typed_csv(path, _CASE_COLUMNS, f"{where}: cases.csv")
    for line, r in enumerate(rows, start=2):
        for c in ("ranks", "batch", "seq_len"):
            if r[c] < 1:
                raise InputError(f"{where}: cases.csv line {line}: {c}={r[c]} must be >= 1")
    return rows
