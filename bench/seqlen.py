"""Benchmark: attention memory and time against sequence length, dense vs blockwise.

    python bench/seqlen.py [--T=1024,2048,4096,8192,16384] [--impls=dense,blockwise]
                           [--repeats=3] [--block_q=512] [--block_kv=512]
                           [--dense_max_gb=8] [--dense_max_T=8192]

A stand-alone stack of attention layers of workload W's shape (hidden 256,
4 layers, 4 heads, 2 KV heads, head_dim 64, RMS norm, residual; no MLP, no RoPE),
batch 1, causal, float32, layers in a lax.scan with full remat as in the
decoder. Per T one JSON line: for each implementation the XLA temp bytes of
the compiled value_and_grad (memory_analysis()), and the median wall seconds
of `repeats` calls after a warm-up call (from T = 8k on: one call, no
warm-up; the executable is compiled before any call). Each line
also carries the host's fp32 matmul GFLOP/s measured in the same run.
A dense run whose compiled temp bytes exceed --dense_max_gb, or T above
--dense_max_T, is compiled only (its temp bytes reported) and not run.
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

from rlx.models.attention import attention  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import matmul_gflops  # noqa: E402

D, L, H, J, E = 256, 4, 4, 2, 64


def init(key):
  ks = jax.random.split(key, 5)
  w = lambda k, shape: 0.02 * jax.random.normal(k, (L,) + shape, jnp.float32)
  return {"norm": jnp.ones((L, D)), "q": w(ks[0], (D, H * E)), "k": w(ks[1], (D, J * E)),
          "v": w(ks[2], (D, J * E)), "o": w(ks[3], (H * E, D))}, w(ks[4], (D,))[0]


def loss_fn(params, readout, x_BTD, impl, block_q, block_kv):
  B, T, _ = x_BTD.shape

  def layer(x, lp):
    h = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * lp["norm"]
    h2 = h.reshape(B * T, D)
    q = (h2 @ lp["q"]).reshape(B, T, H, E)
    k = (h2 @ lp["k"]).reshape(B, T, J, E)
    v = (h2 @ lp["v"]).reshape(B, T, J, E)
    a = attention(q, k, v, impl=impl, causal=True, block_q=block_q, block_kv=block_kv)
    return x + (a.reshape(B * T, H * E) @ lp["o"]).reshape(B, T, D), None

  x, _ = jax.lax.scan(jax.checkpoint(layer, prevent_cse=False), x_BTD, params)
  return jnp.mean(x @ readout)


def run_one(T, impl, args):
  params, readout = init(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (1, T, D), jnp.float32)
  f = jax.jit(jax.value_and_grad(
      lambda p, x: loss_fn(p, readout, x, impl, args.block_q, args.block_kv)))
  t0 = time.perf_counter()
  compiled = f.lower(params, x).compile()
  out = {"compile_s": round(time.perf_counter() - t0, 2),
         "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}
  if impl == "dense" and (out["temp_bytes"] > args.dense_max_gb * 2 ** 30 or T > args.dense_max_T):
    out["skipped"] = (f"compiled only: dense at T={T} needs {out['temp_bytes'] / 2**30:.1f} GiB "
                      f"temporaries and about 4x the 8k time (limits --dense_max_gb="
                      f"{args.dense_max_gb}, --dense_max_T={args.dense_max_T})")
    return out
  long = T >= 8192  # one timed call, no warm-up (compiled above already)
  if not long:
    jax.block_until_ready(compiled(params, x))  # warm-up
  ts = []
  for _ in range(1 if long else args.repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    ts.append(time.perf_counter() - t)
  out["median_s"] = round(statistics.median(ts), 3)
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
    line = {"bench": "seqlen", "T": T, "batch": 1, "model": f"attn-stack D{D} L{L} H{H} J{J} E{E}",
            "block_q": args.block_q, "block_kv": args.block_kv, "matmul_fp32_gflops": gflops}
    for impl in args.impls.split(","):
      r = run_one(T, impl, args)
      if impl in prev:
        r["temp_growth_vs_half_T"] = round(r["temp_bytes"] / max(prev[impl], 1), 2)
      prev[impl] = r["temp_bytes"]
      line[impl] = r
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
