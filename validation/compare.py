"""Predicted vs measured: the real runs of validation/harness.py predicted from a kernel profile
of the same machine (validation/profiler.py), docs/design.md §4 validate schema.

The analytic engine (simulator.analytic.estimate) takes its KernelModel from the device catalog,
so a profiled CPU cannot be plugged into it; this module walks the op list of the validation GPT
itself (validation/gpt.py), op for op, in the vocabulary of simulator.ops (`Op` with FLOPs,
bytes, seconds) and costs every op with `KernelModel.from_profile`:

- GEMMs (`F.linear`, forward; input-gradient and weight-gradient GEMMs in backward, shapes as
  simulator.ops._gemm): the profile's GEMM table, interpolated;
- attention (split into heads, causal SDPA; decode: cache write and SDPA over the cache): the
  profile's prefill/decode attention tables, forward and backward;
- norms, activations, residual adds, head merge, cross-entropy, embedding, bias gradients,
  argmax, fused AdamW: the profile's element-wise tables (forward and backward);
- framework costs that no kernel holds (an nn.Module call, a view, an autograd node, one backward
  call): the profile's overhead table;
- DDP: gradient buckets as DDP forms them (reverse parameter order, 1 MiB first bucket, then
  25 MiB), each an all-reduce costed α + β·bytes from the measured collective points, plus the
  averaging divide. On CPU every core runs a rank's compute and gloo reduces on those same
  cores, so bucket all-reduces are counted as exposed; on GPU only the last bucket is.

Nothing here is fitted to the runs: the runs are only read to know which cases to predict.
"""
from __future__ import annotations

import os
import statistics

from hwmodels.errors import InputError
from hwmodels.kernels import KernelModel
from simulator.ops import Op
from validation.harness import load_run, model_from_dict

DDP_FIRST_BUCKET_BYTES = 1 * 2 ** 20  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES
DDP_BUCKET_BYTES = 25 * 2 ** 20  # DistributedDataParallel(bucket_cap_mb=25)
_ELEM = {"fp32": 4, "bf16": 2, "fp16": 2}


class _Walker:
    """Costs the validation GPT's ops for one rank with one profiled KernelModel."""

    def __init__(self, km: KernelModel, spec):
        self.km, self.sp = km, spec
        prof = km.profile
        self.ew = prof.elementwise(km.dtype)
        self.ov = prof.overhead()
        self.dec = prof.decode_attention(km.dtype)
        self.attn = prof.attention(km.dtype)
        self.gemm_bias = prof.gemm(km.dtype, bias=True) if spec.linear_bias else None
        self.e = _ELEM[km.dtype]
        self.ops: list[Op] = []

    # ---- primitives -----------------------------------------------------------------------
    def add(self, name, phase, t, flops=0.0, nbytes=0.0):
        self.ops.append(Op(name, "compute", phase, flops, nbytes, t))

    def over(self, name, phase, what, n=1):
        if n:
            self.add(f"{name}.{what}", phase, n * self.ov.get(what, 0.0))

    def elem(self, name, op, rows, cols, phase="fwd"):
        self.add(name, phase, self.ew.time_s(op, rows, cols, phase), nbytes=rows * cols * self.e)

    def linear(self, name, m, n, k, bias, phase, module=True):
        """nn.Linear on a (B, s, k) input: module call, views to 2-D and back, addmm; backward:
        input-gradient GEMM, weight-gradient GEMM, bias reduction, autograd nodes."""
        km, e = self.km, self.e
        if phase == "fwd":
            self.over(name, phase, "module_call", 1 if module else 0)
            self.over(name, phase, "dispatch", 2)
            t = self.gemm_bias.time_s(m, n, k) if bias else km.gemm_s(m, n, k)
            self.add(name, phase, t, 2.0 * m * n * k, e * (m * k + k * n + m * n))
            return
        self.add(name + ".dgrad", phase, km.gemm_s(m, k, n), 2.0 * m * n * k, e * (m * n + n * k + m * k))
        self.add(name + ".wgrad", phase, km.gemm_s(n, k, m), 2.0 * m * n * k, e * (m * k + m * n + n * k))
        if bias:
            self.elem(name + ".bgrad", "sum_rows", m, n, "fwd")
        # addmm, transpose, two views, AccumulateGrad per parameter
        self.over(name, phase, "autograd_node", 4 + (2 if bias else 1))

    def norm(self, name, T, phase):
        sp = self.sp
        self.elem(name, sp.norm, T, sp.hidden_size, phase)
        if phase == "bwd":
            self.over(name, phase, "autograd_node", 2 if sp.norm == "layernorm" else 1)

    # ---- one layer ------------------------------------------------------------------------
    def layer(self, B, s, phase):
        sp = self.sp
        T, h, f, d = B * s, sp.hidden_size, sp.ffn_hidden_size, sp.head_dim
        H, KV, bias = sp.num_heads, sp.num_kv_heads, sp.linear_bias
        qkv_n = sp.q_dim + 2 * sp.kv_dim
        rope = not sp.learned_pos_embeddings
        f1 = 2 * f if sp.gated_mlp else f
        act = "swiglu" if sp.gated_mlp else "gelu"
        if phase == "fwd":
            self.over("block", phase, "module_call", 3)  # Block, Attention, MLP
            self.norm("norm1", T, phase)
            self.linear("qkv", T, qkv_n, h, bias, phase)
            self.add("attn", phase, self.km.flash_attention_s(B, s, s, H, KV, d, True),
                     2.0 * B * s * s * H * d)
            if rope:
                self.elem("rope_q", "rope", B * H * s, d, phase)
                self.elem("rope_k", "rope", B * KV * s, d, phase)
            self.elem("merge_heads", "merge_heads", T, sp.attn_out_dim, phase)
            self.linear("proj", T, h, sp.attn_out_dim, bias, phase)
            self.elem("residual1", "add", T, h)
            self.norm("norm2", T, phase)
            self.linear("fc1", T, f1, h, bias, phase)
            self.elem("act", act, T, f, phase)
            self.linear("fc2", T, h, f, bias, phase)
            self.elem("residual2", "add", T, h)
            return
        # backward, in reverse: the residual forks sum their two incoming gradients
        self.elem("residual2.grad_sum", "add", T, h)
        self.linear("fc2", T, h, f, bias, phase)
        self.elem("act", act, T, f, phase)
        self.linear("fc1", T, f1, h, bias, phase)
        self.norm("norm2", T, phase)
        self.elem("residual1.grad_sum", "add", T, h)
        self.linear("proj", T, h, sp.attn_out_dim, bias, phase)
        self.elem("merge_heads", "merge_heads", T, sp.attn_out_dim, phase)
        if rope:
            self.elem("rope_q", "rope", B * H * s, d, phase)
            self.elem("rope_k", "rope", B * KV * s, d, phase)
        t_b = self.attn.bwd_s(B, s, H, KV, d) if self.attn is not None else None
        if t_b is None:
            t_b = self.km.flash_attention_bwd_s(B, s, s, H, KV, d, True)
        self.add("attn", phase, t_b, 5.0 * B * s * s * H * d)
        self.linear("qkv", T, qkv_n, h, bias, phase)
        self.norm("norm1", T, phase)

    # ---- training step --------------------------------------------------------------------
    def train_step(self, B, s, ranks, param_sizes) -> list[Op]:
        sp, km, e = self.sp, self.km, self.e
        T, h, V = B * s, sp.hidden_size, sp.vocab_size
        # forward
        self.over("gpt", "fwd", "module_call", 1 + (1 if ranks > 1 else 0))  # GPT (and DDP)
        self.elem("embedding", "embedding", T, h, "fwd")
        if sp.learned_pos_embeddings:
            self.over("pos", "fwd", "dispatch")
            self.elem("pos_add", "add", T, h)
        for _ in range(sp.num_layers):
            self.layer(B, s, "fwd")
        self.norm("norm_f", T, "fwd")
        self.linear("head", T, V, h, False, "fwd", module=not sp.tie_embeddings)
        self.over("loss", "fwd", "dispatch", 2)
        self.elem("cross_entropy", "cross_entropy", T, V, "fwd")
        # backward
        self.over("backward", "bwd", "backward_call")
        self.elem("cross_entropy", "cross_entropy", T, V, "bwd")
        self.linear("head", T, V, h, False, "bwd")
        self.norm("norm_f", T, "bwd")
        for _ in range(sp.num_layers):
            self.layer(B, s, "bwd")
        if sp.learned_pos_embeddings:  # broadcast add: sum over the batch; slice: zeros + copy
            self.elem("pos.grad", "sum_rows", B, s * h)
            self.add("pos.slice_grad", "bwd", km.memory_s(sp.learned_pos_embeddings * h * e))
            self.over("pos", "bwd", "autograd_node", 3)
        self.elem("embedding", "embedding", T, h, "bwd")
        self.add("embedding.zero_grad", "bwd", km.memory_s(V * h * e))  # dense gradient buffer
        if sp.tie_embeddings:  # head and embedding gradients of the shared weight summed
            self.elem("wte.grad_sum", "add", V, h)
        self.over("embedding", "bwd", "autograd_node", 1)
        # optimizer: fused AdamW over every parameter tensor
        n = len(param_sizes)
        self.add("adamw", "optimizer", self.ew.time_s("adamw", n, sum(param_sizes) / n))
        if ranks > 1:
            self.ddp(ranks, param_sizes)
        return self.ops

    def ddp(self, ranks, param_sizes):
        coll = self.km.profile.collectives()
        if coll is None:
            raise InputError("profile has no collective measurements; re-run validate profile "
                             "(collectives need 2+ processes, or 2+ GPUs with NCCL)")
        buckets, cur, cap = [], 0, DDP_FIRST_BUCKET_BYTES
        for n in reversed(param_sizes):  # DDP fills buckets in reverse registration order
            cur += n * self.e
            if cur >= cap:
                buckets.append(cur)
                cur, cap = 0, DDP_BUCKET_BYTES
        if cur:
            buckets.append(cur)
        cpu = self.km.device.kind == "cpu"
        for i, nb in enumerate(buckets):
            t = coll.time_s("all_reduce", ranks, nb)
            last = i == len(buckets) - 1
            self.ops.append(Op(f"ddp.all_reduce[{i}]", "comm", "dp", 0.0, nb,
                               t if (cpu or last) else 0.0, group="dp"))
            self.add(f"ddp.average[{i}]", "dp", self.km.memory_s(2 * nb))

    # ---- decode iteration -----------------------------------------------------------------
    def decode_iter(self, b, kv_len) -> list[Op]:
        sp, km = self.sp, self.km
        h, f, d, V = sp.hidden_size, sp.ffn_hidden_size, sp.head_dim, sp.vocab_size
        H, KV, bias = sp.num_heads, sp.num_kv_heads, sp.linear_bias
        ph = "fwd"
        self.over("gpt", ph, "module_call")
        self.elem("embedding", "embedding", b, h)
        if sp.learned_pos_embeddings:
            self.over("pos", ph, "dispatch")
            self.elem("pos_add", "add", b, h)
        f1 = 2 * f if sp.gated_mlp else f
        for _ in range(sp.num_layers):
            self.over("block", ph, "module_call", 3)
            self.norm("norm1", b, ph)
            self.linear("qkv", b, sp.q_dim + 2 * sp.kv_dim, h, bias, ph)
            if self.dec is None:
                raise InputError("profile has no decode attention measurements")
            self.add("attn", ph, self.dec.time_s(b, kv_len, H, KV, d), 4.0 * b * kv_len * H * d)
            if not sp.learned_pos_embeddings:
                self.elem("rope_q", "rope", b * H, d)
                self.elem("rope_k", "rope", b * KV, d)
            self.over("merge_heads", ph, "dispatch", 2)  # one token: transpose + view, no copy
            self.linear("proj", b, h, sp.attn_out_dim, bias, ph)
            self.elem("residual1", "add", b, h)
            self.norm("norm2", b, ph)
            self.linear("fc1", b, f1, h, bias, ph)
            self.elem("act", "swiglu" if sp.gated_mlp else "gelu", b, f)
            self.linear("fc2", b, h, f, bias, ph)
            self.elem("residual2", "add", b, h)
        self.over("last_token", ph, "dispatch", 2)
        self.norm("norm_f", b, ph)
        self.linear("head", b, V, h, False, ph, module=not sp.tie_embeddings)
        self.elem("argmax", "argmax", b, V)
        return self.ops


def param_sizes(spec) -> list[int]:
    """Parameter tensors of validation/gpt.py's GPT in registration order (numel each)."""
    h, f = spec.hidden_size, spec.ffn_hidden_size
    ln = [h, h] if spec.norm == "layernorm" else [h]
    sizes = [spec.vocab_size * h]
    if spec.learned_pos_embeddings:
        sizes.append(spec.learned_pos_embeddings * h)
    qkv = spec.q_dim + 2 * spec.kv_dim
    f1 = 2 * f if spec.gated_mlp else f
    for _ in range(spec.num_layers):
        sizes += ln
        for out, inp in ((qkv, h), (h, spec.attn_out_dim)):
            sizes += [out * inp] + ([out] if spec.linear_bias else [])
        sizes += ln
        for out, inp in ((f1, h), (h, f)):
            sizes += [out * inp] + ([out] if spec.linear_bias else [])
    sizes += ln
    if not spec.tie_embeddings:
        sizes.append(spec.vocab_size * h)
    return sizes


def breakdown(ops: list[Op]) -> dict:
    out: dict = {}
    for op in ops:
        if op.kind == "comm":
            key = "dp_comm"
        elif op.phase == "optimizer":
            key = "optimizer"
        elif op.phase == "dp":
            key = "dp_comm"
        else:
            key = op.phase
        if any(op.name.endswith(x) for x in (".module_call", ".dispatch", ".autograd_node", ".backward_call")):
            key = "framework"
        out[key] = out.get(key, 0.0) + op.time_s
    return out


def predict_train(km: KernelModel, spec, batch: int, seq: int, ranks: int) -> tuple[float, dict]:
    ops = _Walker(km, spec).train_step(batch, seq, ranks, param_sizes(spec))
    return sum(o.time_s for o in ops), breakdown(ops)


def predict_decode(km: KernelModel, spec, batch: int, kv_len: int) -> tuple[float, dict]:
    ops = _Walker(km, spec).decode_iter(batch, kv_len)
    return sum(o.time_s for o in ops), breakdown(ops)


def compare(profile_dir: str, runs_dir: str) -> dict:
    """{"cases": [{"name", "predicted", "measured", "unit", "error_pct", ...}], "mape_pct",
    "max_error_pct"} for every case of the run folder."""
    meta, cases, samples = load_run(runs_dir)
    cfg = meta["config"]
    km = KernelModel.from_profile(profile_dir, cfg["dtype"])
    pmeta = km.profile.meta
    if pmeta.get("device") != cfg["device"]:
        raise InputError(f"profile measured {pmeta.get('device')!r} but the runs ran on {cfg['device']!r}")
    if cfg["device"] == "cpu" and pmeta.get("threads") != cfg["threads"]:
        raise InputError(f"profile measured with {pmeta.get('threads')} thread(s) per process but the "
                         f"runs used {cfg['threads']}; profile again with --threads {cfg['threads']}")
    notes = []
    if pmeta.get("device_name") != meta.get("device_name"):
        notes.append(f"profile device {pmeta.get('device_name')!r} differs from run device "
                     f"{meta.get('device_name')!r}")
    busy = [c["case"] for c in cases if float(c.get("foreign_cpu") or 0) > 0.1]
    if busy:
        notes.append(f"other processes used over 10% of the CPUs during {', '.join(busy)}: "
                     f"measured times are inflated")
    spec = model_from_dict(cfg["model"])
    out = []
    for c in cases:
        name, kind = c["case"], c["kind"]
        measured = float(c["median_s"])
        if kind == "train":
            pred, parts = predict_train(km, spec, int(c["batch"]), int(c["seq_len"]), int(c["ranks"]))
        elif kind == "decode":
            kvs = samples.get(name, {}).get("kv_len") or [int(c["kv_len"])]
            preds = {L: predict_decode(km, spec, int(c["batch"]), L) for L in sorted(set(kvs))}
            pred = statistics.median(preds[L][0] for L in kvs)
            parts = preds[sorted(kvs)[len(kvs) // 2]][1]
        else:
            raise InputError(f"runs {runs_dir!r}: case {name!r} has unknown kind {kind!r}")
        out.append({"name": name, "predicted": pred, "measured": measured, "unit": "s",
                    "error_pct": 100.0 * (pred - measured) / measured, "kind": kind,
                    "ranks": int(c["ranks"]), "batch": int(c["batch"]),
                    "measured_p10": float(c["p10_s"]), "measured_p90": float(c["p90_s"]),
                    "breakdown_s": parts})
    errs = [abs(c["error_pct"]) for c in out]
    return {"cases": out, "mape_pct": sum(errs) / len(errs) if errs else 0.0,
            "max_error_pct": max(errs) if errs else 0.0,
            "profile": os.path.abspath(profile_dir), "runs": os.path.abspath(runs_dir),
            "device": meta.get("device_name"), "threads": cfg["threads"], "model": spec.name,
            "notes": notes}


def _shown(path: str) -> str:
    """A folder as the text report shows it: relative to the working directory when inside it
    (no machine-specific prefix), else absolute; --json keeps the absolute path."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def format_report(rep: dict) -> str:
    lines = [f"predicted vs measured on {rep['device']} ({rep['threads']} thread(s) per process), "
             f"model {rep['model']}",
             f"profile {_shown(rep['profile'])}", f"runs    {_shown(rep['runs'])}", "",
             f"{'case':<16}{'predicted':>13}{'measured':>13}{'p10..p90':>21}{'error':>9}"]
    for c in rep["cases"]:
        lines.append(f"{c['name']:<16}{c['predicted'] * 1e3:10.2f} ms{c['measured'] * 1e3:10.2f} ms"
                     f"{c['measured_p10'] * 1e3:9.2f}..{c['measured_p90'] * 1e3:7.2f} ms"
                     f"{c['error_pct']:+8.1f}%")
    lines.append("")
    lines.append(f"MAPE {rep['mape_pct']:.1f}%   max |error| {rep['max_error_pct']:.1f}%")
    for n in rep["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)
