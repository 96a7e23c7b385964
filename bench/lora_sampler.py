"""Sampling with LoRA adapters: merged once per step vs the adapter path; one JSON line.

"merged": W + (alpha / r) A @ B (int8 dequantized) computed by one jitted
function, then the sampler on the merged params (what the trainer does).
"adapters": the sampler on the frozen base with the decoder's `Adapters`,
x @ W + ((x @ A) @ B) * scale in every projection of every decode step (an
int8 base dequantized per layer and step). Both compile once; the times are
medians of steady-state calls (merge included for "merged").

    python bench/lora_sampler.py [--shape smollm2_135m] [--prompts 4] [--group 4]
        [--prompt_len 16] [--new 32] [--rank 16] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from host import matmul_gflops  # noqa: E402
from lora_memory import SHAPES, TARGETS  # noqa: E402
from rlx import models, sampling  # noqa: E402
from rlx.models import lora  # noqa: E402


def _median_s(fn, n: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="smollm2_135m", choices=sorted(SHAPES))
  ap.add_argument("--layers", type=int, default=0, help="override the layer count (0: keep)")
  ap.add_argument("--prompts", type=int, default=4)
  ap.add_argument("--group", type=int, default=4)
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--new", type=int, default=32)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--steps", type=int, default=3)
  a = ap.parse_args()
  hf = dict(SHAPES[a.shape])
  if a.layers:
    hf["num_hidden_layers"] = a.layers
  cfg = models.ModelConfig.from_hf(hf)
  gd, params = models.init_model(cfg, jax.random.PRNGKey(0))
  settings = sampling.SamplingSettings(max_new_tokens=a.new, group_size=a.group)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (a.prompts, a.prompt_len), 0,
                              cfg.vocab_size)
  mask = jnp.ones(tokens.shape, bool)
  key = jax.random.PRNGKey(2)
  out = {"bench": "lora_sampler", "shape": a.shape, "layers": cfg.num_layers, "rank": a.rank,
         "targets": TARGETS, "batch": f"{a.prompts}x{a.group}", "prompt_len": a.prompt_len,
         "new_tokens": a.new, "backend": jax.default_backend(),
         "matmul_fp32_gflops": round(matmul_gflops(1024), 1)}
  for quant in ("none", "int8"):
    spec = lora.make_spec(cfg, a.rank, 2.0 * a.rank, TARGETS, quant)
    ad = jax.tree.map(lambda x: x + 0.01, lora.init_adapters(cfg, spec, jax.random.PRNGKey(3)))
    base, scales = (lora.quantize_base(spec, params) if quant == "int8" else (params, {}))
    merge = jax.jit(lambda ad, base, scales, spec=spec: lora.effective_params(
        spec, base, ad, scales))
    merged_fn = lambda: sampling.sample(gd, merge(ad, base, scales), tokens, mask, key, settings)
    adapter_fn = lambda: sampling.sample(gd, base, tokens, mask, key, settings,
                                         adapters=lora.decoder_adapters(spec, ad, scales))
    r_m, r_a = merged_fn(), adapter_fn()
    name = "lora" if quant == "none" else "qlora_int8"
    out[name] = {"merged_s": round(_median_s(merged_fn, a.steps), 4),
                 "adapters_s": round(_median_s(adapter_fn, a.steps), 4),
                 "merge_only_s": round(_median_s(lambda: merge(ad, base, scales), a.steps), 4),
                 "same_tokens": bool(np.array_equal(r_m.completion_tokens,
                                                    r_a.completion_tokens))}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
