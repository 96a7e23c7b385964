"""Where workload W's reference + update time goes; prints ONE JSON line.

    python bench/update_parts.py [--repeats 7]

W's model (docs/bench.md: Qwen2, vocab 4096, hidden 256, 4 layers, tied,
float32, random init) on W's batch (8 prompts of 32 tokens x 8 completions of
64), each piece jitted alone, median milliseconds:

  {remat}/G{g}/ref_ms   completion log-probs (the reference pass);
  {remat}/G{g}/grad_ms  value_and_grad of sum(advantage * log-prob) (the update's
                        model work, without loss terms and optimizer);
  head_ms, head_grad_ms the LM head's chunked log-softmax alone (chunk 32),
                        forward and forward + backward;

for remat in full / dots / none and g = 1 (every row runs its prompt) or 8
(train.share_prompts: each group's prompt runs once). `matmul_fp32_gflops` is
this host's large-matmul rate in the same run (bench/host.py).

    python bench/update_parts.py --shape bfcl

the same pieces (remat full only, no head parts) at a tool-calling shape:
SmolLM2-135M's (workload R's, random init, fp32), 2 prompts of 320 tokens x 4
completions of 96 (the real-model BFCL runs' lengths), g = 1 or 4.

    python bench/update_parts.py --shape packed [--vocab 32768]

a packed pass (train.packing) with long prompts: W's model (its vocabulary
`--vocab`, default 4096), 16 sequences with prompts of 200-383 tokens and
completions of 8-63 in the trimmed layout Trim(384, 64), packed
(rlx/train/layout.py), remat full: {at,all}/ref_ms and {at,all}/grad_ms with the
LM head on the 16 x 64 completion slots only (what
`rlx.train.steps.completion_logprobs` runs when they are fewer than the packed
slots) and on every packed slot.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import matmul_gflops, median_ms  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--shape", choices=("W", "bfcl", "packed"), default="W")
  ap.add_argument("--vocab", type=int, default=4096, help="--shape packed: vocabulary size")
  args = ap.parse_args()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rlx import models
  from rlx.models import logprobs as lpm

  if args.shape == "packed":
    return packed(args)
  if args.shape == "W":
    cfg = models.ModelConfig.for_family(
        "qwen2", vocab_size=4096, hidden_size=256, intermediate_size=1024, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=64, tie_word_embeddings=True)
    n, p, c, g, remats = 64, 32, 64, 8, ("full", "dots", "none")
  else:
    cfg = models.ModelConfig.for_family(
        "llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=True)
    n, p, c, g, remats = 8, 320, 96, 4, ("full",)
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  V = cfg.vocab_size
  rng = np.random.default_rng(0)
  prompts = np.repeat(rng.integers(2, V, (n // g, p)), g, axis=0)
  tokens = jnp.asarray(np.concatenate([prompts, rng.integers(2, V, (n, c))], 1), jnp.int32)
  mask = jnp.ones((n, p + c), bool)
  adv = jnp.asarray(rng.standard_normal((n, c)), jnp.float32)
  out = {"bench": "update_parts", "shape": args.shape, "backend": jax.default_backend(),
         "matmul_fp32_gflops": round(matmul_gflops(), 1)}
  for remat in remats:
    _, gd = models.with_attention(cfg, remat=remat)
    for share in (1, g):
      def logp(params, share=share, gd=gd, remat=remat):
        return lpm.completion_logprobs(gd, params, tokens, mask, c, group_size=share,
                                       chunk_size=32, remat=remat)[0]
      grad = jax.jit(jax.value_and_grad(lambda params, f=logp: jnp.sum(f(params) * adv)))
      out[f"{remat}/G{share}/ref_ms"] = round(median_ms(jax.jit(logp), params,
                                                        repeats=args.repeats), 1)
      out[f"{remat}/G{share}/grad_ms"] = round(median_ms(grad, params, repeats=args.repeats), 1)
  if args.shape != "W":
    print(json.dumps(out))
    return
  embed = params["embed"][...]
  hidden = jax.random.normal(jax.random.PRNGKey(1), (n, c, 256))
  targets = tokens[:, p:]
  head = lambda e: lambda h: jax.lax.dot_general(
      h, e, (((2,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  head_lp = lambda h, e: jnp.sum(lpm.head_logprobs(head(e), h, targets, 32)[0])
  out["head_ms"] = round(median_ms(jax.jit(head_lp), hidden, embed, repeats=args.repeats), 1)
  out["head_grad_ms"] = round(median_ms(jax.jit(jax.grad(head_lp, argnums=(0, 1))), hidden,
                                        embed, repeats=args.repeats), 1)
  print(json.dumps(out))


def packed(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rlx import models
  from rlx.train import layout, steps

  cfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=args.vocab, hidden_size=256, intermediate_size=1024, num_layers=4,
      num_heads=4, num_kv_heads=2, head_dim=64, tie_word_embeddings=True)
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  _, gd = models.with_attention(cfg, remat="full")
  rng = np.random.default_rng(0)
  n, trim = 16, layout.Trim(384, 64)
  p, c = trim.prompt_len, trim.completion_len
  prompt_n, completion_n = rng.integers(200, p, n), rng.integers(8, c, n)
  pmask = np.arange(p)[None] >= p - prompt_n[:, None]
  cmask = np.arange(c)[None] < completion_n[:, None]
  tokens = jnp.asarray(np.concatenate([np.where(pmask, rng.integers(3, args.vocab, (n, p)), 0),
                                       np.where(cmask, rng.integers(3, args.vocab, (n, c)), 0)],
                                      1), jnp.int32)
  mask = jnp.asarray(np.concatenate([pmask, cmask], 1))
  pk = {k: jnp.asarray(v) for k, v in
        layout.pack(prompt_n, completion_n, trim, layout.row_buckets(n)).items()}
  adv = jnp.asarray(rng.standard_normal((n, c)), jnp.float32)
  out = {"bench": "update_parts", "shape": "packed", "vocab": args.vocab,
         "backend": jax.default_backend(), "matmul_fp32_gflops": round(matmul_gflops(), 1),
         "packed_slots": list(pk["pack_src"].shape), "completion_slots": [n, c]}
  for name in ("at", "all"):
    # "all": the completion slots padded past the packed size, so that
    # completion_logprobs takes its head-on-every-slot branch (same values).
    unpack = pk["unpack"] if name == "at" else jnp.pad(
        pk["unpack"], ((0, 0), (0, pk["pack_src"].size // n + 1 - c)))
    pack = {**pk, "unpack": unpack}

    def logp(params, pack=pack):
      return steps.completion_logprobs(gd, params, tokens, mask, c, remat="full",
                                       packing=pack)[0][:, :c]
    grad = jax.jit(jax.value_and_grad(lambda params, f=logp: jnp.sum(f(params) * adv)))
    out[f"{name}/ref_ms"] = round(median_ms(jax.jit(logp), params, repeats=args.repeats), 1)
    out[f"{name}/grad_ms"] = round(median_ms(grad, params, repeats=args.repeats), 1)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
