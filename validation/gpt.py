"""A GPT-style decoder in plain torch, built from a `ModelSpec`, for the real-run harness.

The simulator sees exactly this model (validation/compare.py walks the same op list): pre-norm
blocks (LayerNorm with bias or RMSNorm, per `spec.norm`); one fused QKV projection; causal
attention through `F.scaled_dot_product_attention`; GELU (2 matrices) or SwiGLU (3 matrices in two
GEMMs: a fused gate+up projection, then down) MLP per `spec.gated_mlp`; biases per
`spec.linear_bias`; learned absolute positions when `spec.learned_pos_embeddings` > 0, else rotary
embeddings (rotate-half, as Llama); final norm; LM head tied to the token embedding per
`spec.tie_embeddings`. No dropout (timing runs). Decoding keeps a preallocated KV cache per layer.

torch is imported at the top of this file: import it only from code that already needs torch
(the harness and the profiler import it inside their functions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwmodels.errors import InputError

ROPE_BASE = 10000.0


from validation.harness import check_model as check_supported  # noqa: E402,F401


def rope_tables(max_len: int, head_dim: int, device=None, dtype=torch.float32):
    """cos, sin of shape (max_len, head_dim) for rotate-half rotary embeddings."""
    inv = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype)


def apply_rope(x, cos, sin):
    """x: (B, heads, s, d); cos/sin: (s, d)."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def attention_core(qkv, heads: int, kv_heads: int, head_dim: int, rope=None, cache=None,
                   pos: int = 0):
    """From the fused QKV projection's output (B, s, (heads + 2·kv_heads)·head_dim) to the
    attention output (B, heads, s, head_dim): split into heads, rotary embeddings (if `rope`),
    KV-cache write and causal SDPA (prefill/training) or SDPA of one new token over the cache."""
    B, s, _ = qkv.shape
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    q, k, v = qkv.split([q_dim, kv_dim, kv_dim], dim=-1)
    q = q.view(B, s, heads, head_dim).transpose(1, 2)
    k = k.view(B, s, kv_heads, head_dim).transpose(1, 2)
    v = v.view(B, s, kv_heads, head_dim).transpose(1, 2)
    if rope is not None:
        cos, sin = rope[0][pos:pos + s], rope[1][pos:pos + s]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    gqa = kv_heads != heads
    if cache is None:  # training
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    kc, vc = cache
    kc[:, :, pos:pos + s] = k
    vc[:, :, pos:pos + s] = v
    if s > 1:  # prefill: attend within the prompt
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    # decode: the new token attends to every cached position
    return F.scaled_dot_product_attention(q, kc[:, :, :pos + 1], vc[:, :, :pos + 1], enable_gqa=gqa)


def merge_heads(y):
    """(B, heads, s, d) -> (B, s, heads·d): a copy when s > 1, a view when s == 1."""
    B, H, s, d = y.shape
    return y.transpose(1, 2).reshape(B, s, H * d)


class Attention(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.h, self.d, self.kv = spec.num_heads, spec.head_dim, spec.num_kv_heads
        self.qkv = nn.Linear(spec.hidden_size, spec.q_dim + 2 * spec.kv_dim, bias=spec.linear_bias)
        self.proj = nn.Linear(spec.attn_out_dim, spec.hidden_size, bias=spec.linear_bias)

    def forward(self, x, rope=None, cache=None, pos: int = 0):
        y = attention_core(self.qkv(x), self.h, self.kv, self.d, rope, cache, pos)
        return self.proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.gated = spec.gated_mlp
        f = spec.ffn_hidden_size
        self.fc1 = nn.Linear(spec.hidden_size, 2 * f if self.gated else f, bias=spec.linear_bias)
        self.fc2 = nn.Linear(f, spec.hidden_size, bias=spec.linear_bias)

    def forward(self, x):
        return self.fc2(act(self.fc1(x), self.gated))


def act(x, gated: bool):
    """GELU (tanh approximation, GPT-2), or SwiGLU on a fused [gate | up] projection."""
    if gated:
        g, u = x.chunk(2, dim=-1)
        return F.silu(g) * u
    return F.gelu(x, approximate="tanh")


def make_norm(spec):
    if spec.norm == "layernorm":
        return nn.LayerNorm(spec.hidden_size, eps=1e-5)
    return nn.RMSNorm(spec.hidden_size, eps=1e-6)


class Block(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.norm1, self.attn = make_norm(spec), Attention(spec)
        self.norm2, self.mlp = make_norm(spec), MLP(spec)

    def forward(self, x, rope=None, cache=None, pos: int = 0):
        x = x + self.attn(self.norm1(x), rope, cache, pos)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, spec, max_len: int):
        super().__init__()
        check_supported(spec)
        self.spec = spec
        self.max_len = max_len
        self.wte = nn.Embedding(spec.vocab_size, spec.hidden_size)
        if spec.learned_pos_embeddings:
            if max_len > spec.learned_pos_embeddings:
                raise InputError(f"model {spec.name!r}: sequence of {max_len} tokens exceeds its "
                                 f"{spec.learned_pos_embeddings} learned positions")
            self.wpe = nn.Embedding(spec.learned_pos_embeddings, spec.hidden_size)
        else:
            self.wpe = None
            cos, sin = rope_tables(max_len, spec.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.num_layers))
        self.norm_f = make_norm(spec)
        self.head = None if spec.tie_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.apply(_init)

    def logits(self, x):
        return F.linear(x, self.wte.weight) if self.head is None else self.head(x)

    def forward(self, idx, targets=None, caches=None, pos: int = 0):
        """Training: idx (B, s) and targets -> mean cross-entropy. Decoding: caches given ->
        logits of the last position, (B, V)."""
        B, s = idx.shape
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe.weight[pos:pos + s]
        else:
            rope = (self.rope_cos, self.rope_sin)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope, None if caches is None else caches[i], pos)
        if caches is not None:
            return self.logits(self.norm_f(x[:, -1:]))[:, 0]
        logits = self.logits(self.norm_f(x))
        return F.cross_entropy(logits.view(B * s, -1), targets.view(B * s))

    def new_caches(self, batch: int, max_len: int):
        sp = self.spec
        p = next(self.parameters())
        shape = (batch, sp.num_kv_heads, max_len, sp.head_dim)
        return [(torch.zeros(shape, device=p.device, dtype=p.dtype),
                 torch.zeros(shape, device=p.device, dtype=p.dtype)) for _ in range(sp.num_layers)]


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


