"""Where a decode step of workload R goes; prints ONE JSON line.

    python bench/decode_parts.py [--rows 32] [--slots 104] [--repeats 20]

Workload R's model (SmolLM2-135M-Instruct's shape, random init, float32; see
docs/bench.md) at one decode step of `--rows` sequences over a KV cache of
`--slots` slots, each part jitted alone, median milliseconds:

  layers_ms        the 30 layers as the sampler runs them (rlx.models.forward
                   with unstack_layers and per-layer caches, cache donated);
  mlp_matmuls_ms   only the layers' gate, up and down matmuls, chained;
  attn_proj_ms     only the layers' q, k, v and o matmuls, chained;
  head_ms          the tied output head as the sampler runs it (h @ W, W the
                   [D, V] head_matrix laid out once); head_vd_ms the same
                   product against the embedding's own [V, D] layout;
  sample_ms        one sampling step (temperature 1, inverse CDF, log-probs).

The matmul parts are the floor of a decode step at this batch: their rate at
`--rows` rows (reported as GFLOP/s) is far below the host's large-matmul rate
(`matmul_fp32_gflops`, same run).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import matmul_gflops, median_ms  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  ap.add_argument("--rows", type=int, default=32)
  ap.add_argument("--slots", type=int, default=104)
  ap.add_argument("--repeats", type=int, default=20)
  args = ap.parse_args()
  import jax
  import jax.numpy as jnp
  from rlx import models
  from rlx.sampling.step import SamplingSettings, sample_step

  cfg = models.ModelConfig.for_family(
      "llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
      num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=True)
  gd, params = models.init_model(cfg, jax.random.PRNGKey(0))
  N, S, D = args.rows, args.slots, cfg.hidden_size
  layers = models.unstack_layers(cfg, params)
  tok_N1 = jnp.ones((N, 1), jnp.int32)
  pos_N1 = jnp.full((N, 1), S // 2, jnp.int32)
  kv_mask_NS = jnp.ones((N, S), bool)

  @functools.partial(jax.jit, donate_argnums=1)
  def step_layers(layers, cache):
    return models.forward(gd, params, tok_N1, pos_N1, kv_mask_NS, cache=cache,
                          cache_index=S // 2, return_hidden=True, layers=layers)

  cache = [models.init_layer_caches(cfg, N, S)]

  def run_layers():
    h, cache[0] = step_layers(layers, cache[0])
    return h

  @jax.jit
  def mlp_matmuls(layers, h_ND):
    for lp in layers:
      g, u = h_ND @ lp["gate"], h_ND @ lp["up"]
      h_ND = h_ND + (jax.nn.silu(g) * u) @ lp["down"]
    return h_ND

  @jax.jit
  def attn_proj(layers, h_ND):
    for lp in layers:
      q, k, v = (h_ND @ lp[n].reshape(D, -1) for n in ("q", "k", "v"))
      h_ND = h_ND + q @ lp["o"].reshape(-1, D) + (k.sum() + v.sum())
    return h_ND

  head_DV = params["embed"][...].T  # the [D, V] layout
  head = jax.jit(lambda h, w: h @ w)
  head_vd = jax.jit(lambda h, w: jax.lax.dot_general(h, w, (((1,), (1,)), ((), ()))))
  settings = SamplingSettings(max_new_tokens=128)
  sample = jax.jit(lambda logits, key: sample_step(logits, key, settings))

  h_ND = jnp.ones((N, D), jnp.float32)
  r = args.repeats
  out = dict(bench="decode_parts", workload="R", backend=jax.default_backend(), rows=N, slots=S)
  out["layers_ms"] = median_ms(run_layers, repeats=r)
  out["mlp_matmuls_ms"] = median_ms(mlp_matmuls, layers, h_ND, repeats=r)
  out["attn_proj_ms"] = median_ms(attn_proj, layers, h_ND, repeats=r)
  out["head_ms"] = median_ms(head, h_ND, head_DV, repeats=r)
  out["head_vd_ms"] = median_ms(head_vd, h_ND, params["embed"][...], repeats=r)
  out["sample_ms"] = median_ms(sample, jnp.zeros((N, cfg.vocab_size)), jax.random.PRNGKey(1),
                               repeats=r)
  F, V = cfg.intermediate_size, cfg.vocab_size
  qkvo = D * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + cfg.num_heads * cfg.head_dim * D
  for part, flops in (("mlp_matmuls", 3 * D * F), ("attn_proj", qkvo), ("head", D * V)):
    layers_n = 1 if part == "head" else cfg.num_layers
    out[f"{part}_gflops"] = round(2 * N * flops * layers_n / out[f"{part}_ms"] / 1e6, 1)
  out["matmul_parts_ms"] = out["mlp_matmuls_ms"] + out["attn_proj_ms"] + out["head_ms"]
  out["matmul_fp32_gflops"] = round(matmul_gflops(), 1)
  out["load_avg_1m"] = round(os.getloadavg()[0], 2)
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
  main()
