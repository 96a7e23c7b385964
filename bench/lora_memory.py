"""Training-state memory of LoRA / QLoRA vs full fine-tuning; one JSON line.

Bytes = policy params + optimizer state + reference params, from the shapes
(`jax.eval_shape`, nothing allocated): full fine-tuning keeps the params, two
AdamW moments and a reference copy; LoRA keeps the frozen base (which is also
the reference, adapters off), the adapters and their moments; QLoRA int8
stores the adapted projections int8 with per-output-channel scales, QLoRA
int4 packed int4 with a scale per 64 inputs. For both
shapes the update step is also compiled on abstract shapes and its
`memory_analysis()` (arguments + temporaries, plus the reference for full
fine-tuning) reported. The update step time (SmolLM2-135M shape, small batch)
is measured for full, LoRA and QLoRA int8 / int4.

    python bench/lora_memory.py [--rank 16] [--steps 3] [--no_time]
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
import optax  # noqa: E402

from host import matmul_gflops  # noqa: E402
from rlx import models  # noqa: E402
from rlx.models import lora, shapes  # noqa: E402
from rlx.train import steps  # noqa: E402

# Output key -> built-in shape (rlx/models/shapes.py), fp32 as the bench reports.
SHAPES = {"smollm2_135m": "smollm2-135m", "qwen2.5_1.5b": "qwen2.5-1.5b"}
TARGETS = "q,k,v,o,gate,up,down"
P, C, N = 16, 16, 4  # prompt, completion tokens, completions


def _tx():
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))


def _nbytes(tree) -> int:
  return lora.num_bytes(tree)


def _batch():
  return dict(tokens=jax.ShapeDtypeStruct((N, P + C), jnp.int32),
              attn_mask=jax.ShapeDtypeStruct((N, P + C), jnp.bool_),
              loss_mask=jax.ShapeDtypeStruct((N, C), jnp.float32),
              adv=jax.ShapeDtypeStruct((N,), jnp.float32),
              old_logp=jax.ShapeDtypeStruct((N, C), jnp.float32),
              sample_logp=jax.ShapeDtypeStruct((N, C), jnp.float32),
              ref_logp=jax.ShapeDtypeStruct((N, C), jnp.float32),
              correct=jax.ShapeDtypeStruct((N,), jnp.bool_),
              group=jax.ShapeDtypeStruct((N,), jnp.int32),
              lengths=jax.ShapeDtypeStruct((N,), jnp.int32))


def _concrete(abstract):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)


def variants(cfg, rank: int):
  """name -> (update fn, abstract state, abstract frozen or None, reference bytes)."""
  gd, params = models.abstract_model(cfg)
  tx = _tx()
  kw = dict(temperature=1.0, chunk=0, detached_old=True, max_len=C, num_groups=2)
  terms = {"pg": {}, "kl": {"coef": 0.04}}
  out = {}
  state = steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                           opt_state=jax.eval_shape(tx.init, params),
                           skipped=jax.ShapeDtypeStruct((), jnp.int32))
  out["full"] = (steps.make_update_fn(gd, tx, terms, **kw), state, None, _nbytes(params))
  for quant in ("none", "int8", "int4"):
    spec = lora.make_spec(cfg, rank, 2.0 * rank, TARGETS, quant)
    ad = jax.eval_shape(lambda: lora.init_adapters(cfg, spec, jax.random.PRNGKey(0)))
    base, scales = params, {}
    if quant != "none":
      base, scales = jax.eval_shape(lambda p, spec=spec: lora.quantize_base(spec, p), params)
    frozen = {"params": base, "scales": scales}
    eff = lambda a, f, step, spec=spec: (f["params"],
                                         lora.decoder_adapters(spec, a, f["scales"]))
    st = steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=ad,
                          opt_state=jax.eval_shape(tx.init, ad),
                          skipped=jax.ShapeDtypeStruct((), jnp.int32))
    out["lora" if quant == "none" else f"qlora_{quant}"] = (
        steps.make_update_fn(gd, tx, terms, effective=eff, **kw), st, frozen, 0)
  return out


def state_bytes(v) -> dict[str, int]:
  _, st, frozen, ref = v
  params = _nbytes(st.params) + (_nbytes(frozen) if frozen is not None else 0)
  return {"params": params, "optimizer": _nbytes(st.opt_state), "reference": ref,
          "total": params + _nbytes(st.opt_state) + ref}


def compiled_bytes(v) -> dict[str, int]:
  fn, st, frozen, ref = v
  args = (st, _batch()) if frozen is None else (st, _batch(), frozen)
  m = fn.lower(*args).compile().memory_analysis()
  return {"arguments": int(m.argument_size_in_bytes), "temp": int(m.temp_size_in_bytes),
          "reference": ref,
          "total": int(m.argument_size_in_bytes + m.temp_size_in_bytes) + ref}


def step_time(cfg, v, n: int) -> float:
  fn, st, frozen, _ = v
  gd, params = models.init_model(cfg, jax.random.PRNGKey(0))
  tx = _tx()
  if frozen is None:
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=tx.init(params), skipped=jnp.zeros((), jnp.int32))
    extra = ()
  else:
    ad = jax.tree.map(lambda s: 0.01 * jnp.ones(s.shape, s.dtype), st.params)
    fr = _concrete(frozen)
    fr["params"] = params if not frozen["scales"] else jax.tree.map(
        lambda s, p: jnp.zeros(s.shape, s.dtype) if s.dtype in (jnp.int8, jnp.int4) else p,
        frozen["params"], params)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=ad, opt_state=tx.init(ad),
                             skipped=jnp.zeros((), jnp.int32))
    extra = (fr,)
  batch = _concrete(_batch())
  batch["loss_mask"] = jnp.ones((N, C))
  state, m = fn(state, batch, *extra)  # compile
  jax.block_until_ready(m)
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    state, m = fn(state, batch, *extra)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--no_time", action="store_true")
  a = ap.parse_args()
  out = {"bench": "lora_memory", "rank": a.rank, "targets": TARGETS, "param_dtype": "float32",
         "optimizer": "adamw", "batch": f"{N}x{P + C}", "backend": jax.default_backend(),
         "matmul_fp32_gflops": round(matmul_gflops(1024), 1)}
  for name, shape in SHAPES.items():
    cfg = models.ModelConfig.from_hf(shapes.hf_config(shape), dtype="float32",
                                     param_dtype="float32")
    vs = variants(cfg, a.rank)
    row = {k: state_bytes(v) for k, v in vs.items()}
    for k, v in vs.items():
      row[k]["compiled"] = compiled_bytes(v)
    for k in ("lora", "qlora_int8", "qlora_int4"):
      row[f"{k}_over_full"] = round(row[k]["total"] / row["full"]["total"], 4)
      if "compiled" in row[k]:
        row[f"{k}_over_full_compiled"] = round(
            row[k]["compiled"]["total"] / row["full"]["compiled"]["total"], 4)
    if name == "smollm2_135m" and not a.no_time:
      for k in ("full", "lora", "qlora_int8", "qlora_int4"):
        row[k]["update_step_s"] = round(step_time(cfg, vs[k], a.steps), 4)
    out[name] = row
  print(json.dumps(out))


if __name__ == "__main__":
  main()
