"""Measure the component costs of an LLM server's API frontend on this machine's CPU.

What an OpenAI-compatible server (vLLM's API server, SGLang's TokenizerManager, trtllm-serve) does
per request outside the GPU, measured one component at a time:
- prompt tokenisation: HF `tokenizers` (the Rust fast tokenizer those servers call) encoding one
  prompt at a time, per prompt token; a byte-level BPE with the Llama-3 pre-tokenisation pattern
  (Meta llama3 `tokenizer.py` pat_str), trained here on local text because no model tokenizer
  file can be downloaded on this machine; prompts are English prose and, as the `random` dataset
  of vLLM's benchmark_serving.py builds them, text decoded from random token ids;
- detokenisation: `tokenizers.decoders.DecodeStream`, the incremental decoder of vLLM's
  FastIncrementalDetokenizer (vllm/v1/engine/detokenizer.py), per output token;
- HTTP: a stdlib asyncio HTTP/1.1 server with keep-alive that parses a JSON completion request
  (per request) and streams one server-sent event per output token (per token), timed inside
  the server.

Writes validation/data/frontend/frontend_costs.json (stamped with CPU, library versions, date).
Run:  python validation/measure_frontend.py [--out PATH]
Nothing here is read at simulation time: simulator/data/frontend.yaml copies the figures with
this file as their source.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import glob
import json
import os
import platform
import random
import statistics
import sys
import sysconfig
import threading
import time

from hwmodels.fileio import write_text_atomic

# Meta llama3 tokenizer.py pat_str (the pre-tokenisation split of Llama-3's BPE)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus_files() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + glob.glob(os.path.join(ROOT, "*.md")))
    files += sorted(glob.glob(os.path.join(stdlib, "*.py")))
    return files


def build_tokenizer(files: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    return tok


def prose_prompts(files: list[str], tokens: int, n: int, tok) -> list[str]:
    text = "\n".join(open(f, encoding="utf-8", errors="replace").read() for f in files if f.endswith(".md"))
    ids = tok.encode(text).ids
    rng = random.Random(0)
    out = []
    for _ in range(n):
        s = rng.randrange(0, max(1, len(ids) - tokens))
        out.append(tok.decode(ids[s:s + tokens]))
    return out


def random_prompts(tok, tokens: int, n: int) -> list[str]:
    """vLLM benchmark_serving `random` dataset: random token ids decoded to text."""
    rng = random.Random(1)
    v = tok.get_vocab_size()
    return [tok.decode([rng.randrange(v) for _ in range(tokens)]) for _ in range(n)]


def time_encode(tok, prompts: list[str], repeat: int = 3) -> dict:
    per_token = []
    for _ in range(repeat):
        for p in prompts:
            t0 = time.perf_counter()
            enc = tok.encode(p, add_special_tokens=False)
            dt = time.perf_counter() - t0
            per_token.append(dt / max(1, len(enc.ids)))
    return {"median_s_per_token": statistics.median(per_token),
            "p90_s_per_token": statistics.quantiles(per_token, n=10)[-1], "samples": len(per_token)}


def time_decode_stream(tok, prompts: list[str]) -> dict:
    from tokenizers.decoders import DecodeStream
    per_token = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False).ids
        stream = DecodeStream(skip_special_tokens=True)
        t0 = time.perf_counter()
        for i in ids:
            stream.step(tok, i)
        per_token.append((time.perf_counter() - t0) / max(1, len(ids)))
    return {"median_s_per_token": statistics.median(per_token), "samples": len(per_token)}


# ---- HTTP: a minimal asyncio server, timed inside the handler -------------------------------------
def time_http(requests: int, tokens_per_response: int) -> dict:
    handle_s, chunk_s = [], []

    async def handle(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            t0 = time.perf_counter()
            length = 0
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                if k.lower() == "content-length":
                    length = int(v)
            body = json.loads(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            t1 = time.perf_counter()
            for i in range(body["max_tokens"]):
                ev = json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "text": " tok", "logprobs": None, "finish_reason": None}]})
                data = f"data: {ev}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            t2 = time.perf_counter()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            handle_s.append(t1 - t0)
            chunk_s.append((t2 - t1) / max(1, body["max_tokens"]))
        writer.close()

    ready = threading.Event()
    loop = asyncio.new_event_loop()
    box = {}

    def serve():
        asyncio.set_event_loop(loop)
        srv = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        box["port"] = srv.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    ready.wait()
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", box["port"])
    payload = json.dumps({"model": "m", "prompt": "x " * 64, "max_tokens": tokens_per_response,
                          "stream": True, "ignore_eos": True})
    for _ in range(requests):
        conn.request("POST", "/v1/completions", body=payload, headers={"content-type": "application/json"})
        conn.getresponse().read()
    conn.close()
    time.sleep(0.05)  # let the server see the closed connection
    loop.call_soon_threadsafe(loop.stop)
    th.join(timeout=5)
    return {"request_median_s": statistics.median(handle_s), "stream_chunk_median_s": statistics.median(chunk_s),
            "requests": requests, "tokens_per_response": tokens_per_response}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "validation", "data", "frontend", "frontend_costs.json"))
    ap.add_argument("--vocab", type=int, default=128256)  # Llama-3 vocabulary size
    args = ap.parse_args(argv)
    import tokenizers
    files = corpus_files()
    t0 = time.perf_counter()
    tok = build_tokenizer(files, args.vocab)
    train_s = time.perf_counter() - t0
    prose = prose_prompts(files, 1024, 40, tok)
    rand = random_prompts(tok, 1024, 40)
    result = {
        "what": "API-server component costs per request / prompt token / output token (one CPU thread)",
        "tokenizer": {"library": f"tokenizers {tokenizers.__version__}", "model": "byte-level BPE, Llama-3 pre-tokenizer pattern",
                      "vocab_size": tok.get_vocab_size(), "trained_on_files": len(files), "train_s": round(train_s, 1)},
        "encode_prose": time_encode(tok, prose),
        "encode_random_ids": time_encode(tok, rand),
        "decode_stream": time_decode_stream(tok, prose + rand),
        "http": time_http(400, 64),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                    "platform": platform.platform(), "cpus": os.cpu_count(),
                    "note": "2 cores shared with other processes while measuring"},
        "date": datetime.date.today().isoformat(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            result["machine"]["cpu"] = names[0]
    except OSError:
        pass
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
