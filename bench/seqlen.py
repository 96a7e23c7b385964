"""Benchmark: decoder memory and time against sequence length, dense vs blockwise.

    python bench/seqlen.py [--T=1024,2048,4096,8192,16384] [--impls=dense,blockwise]
                           [--repeats=3] [--block_q=512] [--block_kv=512]
                           [--dense_max_gb=8] [--dense_max_T=8192]

The real decoder (rlx.models) of workload W's shape: random Qwen2, vocab 4096,
hidden 256, intermediate 1024, 4 layers, 4 heads, 2 KV heads, head_dim 64,
float32, batch 1. Measured: jit(value_and_grad) of the mean completion
log-prob (second half of the row) from rlx.models.logprobs.token_logprobs
with remat "full" and chunk 256, model.attention = each implementation. Per T
one JSON line: for each implementation the XLA temp bytes of the compiled step
(memory_analysis()) and the median wall seconds of `repeats` calls after a
warm-up call (from T = 8k on: one call, no warm-up; compiled before any
call), the model matmul FLOP utilization of that time, and the host's fp32
matmul GFLOP/s measured in the same run. A dense run whose temp bytes exceed
--dense_max_gb, or T above --dense_max_T, is compiled only (temp bytes
reported) and not run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rlx import models  # noqa: E402
from rlx.models.logprobs import token_logprobs  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import matmul_gflops, model_flops, utilization  # noqa: E402

CFG = models.ModelConfig.for_family("qwen2", vocab_size=4096, hidden_size=256,
                                    intermediate_size=1024, num_layers=4, num_heads=4,
                                    num_kv_heads=2, head_dim=64, remat="full")


def run_one(T, impl, args, gflops):
  cfg, graphdef = models.with_attention(CFG, attention=impl, attention_block_q=args.block_q,
                                        attention_block_kv=args.block_kv)
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, T), 0, cfg.vocab_size)
  mask = jnp.ones((1, T), bool)
  completion = (jnp.arange(T) >= T // 2)[None]

  def loss(p):
    logp, _ = token_logprobs(graphdef, p, tokens, mask, chunk_size=256, remat="full")
    return (logp * completion).sum() / completion.sum()
  f = jax.jit(jax.value_and_grad(loss))
  t0 = time.perf_counter()
  compiled = f.lower(params).compile()
  out = {"compile_s": round(time.perf_counter() - t0, 2),
         "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}
  if impl == "dense" and (out["temp_bytes"] > args.dense_max_gb * 2 ** 30 or T > args.dense_max_T):
    out["skipped"] = (f"compiled only: dense at T={T} needs {out['temp_bytes'] / 2**30:.1f} GiB "
                      f"temporaries (limits --dense_max_gb={args.dense_max_gb}, "
                      f"--dense_max_T={args.dense_max_T})")
    return out
  long = T >= 8192  # one timed call, no warm-up (compiled above already)
  if not long:
    jax.block_until_ready(compiled(params))  # warm-up
  ts = []
  for _ in range(1 if long else args.repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(params))
    ts.append(time.perf_counter() - t)
  out["median_s"] = round(statistics.median(ts), 3)
  flops = model_flops(models.num_params(params), T, backward=True, layers=cfg.num_layers,
                      width=cfg.num_heads * cfg.head_dim, context=T // 2)
  out["matmul_utilization"] = round(utilization(flops, out["median_s"], gflops), 3)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--T", default="1024,2048,4096,8192,16384")
  p.add_argument("--impls", default="dense,blockwise")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--block_q", type=int, default=512)
  p.add_argument("--block_kv", type=int, default=512)
  p.add_argument("--dense_max_gb", type=float, default=8.0)
  p.add_argument("--dense_max_T", type=int, default=8192)
  args = p.parse_args()
  gflops = round(matmul_gflops(), 1)
  prev = {}
  for T in map(int, args.T.split(",")):
    line = {"bench": "seqlen", "T": T, "batch": 1, "model": "qwen2 V4096 D256 F1024 L4 H4 J2 E64",
            "step": "value_and_grad mean completion logp, remat full, chunk 256",
            "block_q": args.block_q, "block_kv": args.block_kv, "matmul_fp32_gflops": gflops}
    for impl in args.impls.split(","):
      r = run_one(T, impl, args, gflops)
      if impl in prev:
        r["temp_growth_vs_half_T"] = round(r["temp_bytes"] / max(prev[impl], 1), 2)
      prev[impl] = r["temp_bytes"]
      line[impl] = r
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
