"""The decoder on a mesh of several devices (ModelConfig.mesh, rlx.models.sharding):
the same numbers as on one device, the residual stream split over the batch axes,
splash under shard_map.

The checks run in one subprocess (this file run as a script with 4 simulated CPU
devices) that prints a JSON dict of measurements; the tests assert on them.
"""
from __future__ import annotations

import json

import pytest

from rlx import testing

DEVICES = 4


def _forward_diffs(place):
  """Max |sharded - 1-device| logits of dense and blockwise, and the hidden's spec."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rlx import models
  cfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=8, attention_block_q=8, attention_block_kv=8)
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  B, T = 4, 16
  tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, 64)
  mask = jnp.arange(T)[None] >= jnp.asarray([0, 3, 7, 0])[:, None]  # left padding
  pos = models.positions_from_mask(mask)
  mm = place.model_mesh()
  sharded_params = place.put_params(params)
  sharded = place.to_global((np.asarray(tokens), np.asarray(pos), np.asarray(mask)), B)
  out = {"model_mesh": [list(mm.batch), list(mm.heads), list(mm.kv_heads)]}
  for impl in ("dense", "blockwise"):
    _, g1 = models.with_attention(cfg, attention=impl)
    _, gm = models.with_attention(cfg, attention=impl, mesh=mm)
    f = lambda g, p, t, q, m: models.forward(g, p, t, q, m)[0]
    one = jax.jit(f, static_argnums=0)(g1, params, tokens, pos, mask)
    many = jax.jit(f, static_argnums=0)(gm, sharded_params, *sharded)
    out[f"{impl}_max_diff"] = float(jnp.max(jnp.abs(np.asarray(many) - np.asarray(one))))
    out[f"{impl}_max_abs"] = float(jnp.max(jnp.abs(one)))
  hidden = jax.jit(lambda p, t, q, m: models.forward(gm, p, t, q, m, return_hidden=True)[0])(
      sharded_params, *sharded)
  out["hidden_spec"] = [None if a is None else a if isinstance(a, str) else list(a)
                        for a in hidden.sharding.spec]
  # With a KV cache (the sampler's prefill and decode) the residual is not constrained.
  cache = models.init_cache(cfg, B, T)
  text = jax.jit(lambda p, t, q, m, c: models.forward(gm, p, t, q, m, cache=c)[0]).lower(
      sharded_params, *sharded, cache).as_text()
  out["cache_constraints"] = text.count("sharding_constraint")
  return out


def _splash_diffs(place):
  """splash (Pallas interpreter) under shard_map on the mesh vs dense on one device."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rlx.models.attention import attention
  B, T, H, J, E = 2, 128, 4, 2, 16
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(3), 3)
  q = jax.random.normal(kq, (B, T, H, E))
  k, v = jax.random.normal(kk, (B, T, J, E)), jax.random.normal(kv, (B, T, J, E))
  seg = jnp.asarray([[0] * 50 + [1] * 78, [0] * 128], jnp.int32)
  kw = dict(kv_mask_BS=jnp.arange(T)[None] >= jnp.asarray([0, 21])[:, None],
            q_segment_ids_BT=seg, kv_segment_ids_BS=seg, block_q=128, block_kv=128)
  w = jax.random.normal(jax.random.PRNGKey(4), q.shape)

  def run(impl, **extra):
    f = lambda q, k, v: attention(q, k, v, impl=impl, **kw, **extra)
    return jax.jit(lambda q, k, v: (f(q, k, v), jax.grad(
        lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(q, k, v)))

  out_d, g_d = run("dense")(q, k, v)
  put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(
      place.mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")))
  out_s, g_s = run("splash", interpret=True, mesh=place.model_mesh())(put(q), put(k), put(v))
  diffs = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip((out_s, *g_s),
                                                                       (out_d, *g_d))]
  return {"splash_max_diff": float(max(diffs))}


def _plan_temps():
  """ref_logprobs of a small fsdp=4 run (abstract_run, XLA:CPU): compiled temporaries and
  sharding constraints in the lowered step, with and without the model mesh."""
  from rlx import models
  from rlx.train import abstract, placement
  from rlx.train.config import base_config
  c = base_config()
  c.data.max_prompt_len, c.sampling.max_new_tokens = 64, 64
  c.train.batch_prompts, c.sampling.group_size = 4, 1
  c.train.eval_every = 0
  c.model.logprob_chunk = 64
  c.loss.terms = {"pg": {"clip_low": 0.2, "clip_high": 0.2, "aggregation": "token_mean"},
                  "kl": {"coef": 0.04, "estimator": "k3"}}
  c.mesh.axes = {"data": 1, "fsdp": 4, "tensor": 1}
  mcfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=272, hidden_size=128, intermediate_size=256, num_layers=2,
      num_heads=2, num_kv_heads=2, head_dim=64, attention="blockwise", attention_block_q=64,
      attention_block_kv=64, pad_token_id=0)
  out = {}
  own = placement.Placement.model_mesh
  for name, model_mesh in (("with", own), ("without", lambda self: None)):
    placement.Placement.model_mesh = model_mesh
    try:
      run = abstract.abstract_run(c, mcfg)
    finally:
      placement.Placement.model_mesh = own
    step = next(s for s in run.steps if s.name == "ref_logprobs")
    text = step.fn.lower(*step.args, **step.kwargs).as_text()
    out[name] = {"temp": int(abstract.compile_step(step).memory_analysis().temp_size_in_bytes),
                 "constraints": text.count("sharding_constraint")}
  return out


def _packed_diffs(place):
  """A packed pass with long prompts (LM head on the completion slots alone,
  token_logprobs' targets_at) on the mesh vs one device: loss and gradients."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rlx import models
  from rlx.train import layout, steps
  cfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=8)
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  n, P, C = 8, 24, 4
  prompt_n, completion_n = rng.integers(10, P, n), rng.integers(1, C, n)
  pmask = np.arange(P)[None] >= P - prompt_n[:, None]
  cmask = np.arange(C)[None] < completion_n[:, None]
  tokens = np.concatenate([np.where(pmask, rng.integers(2, 64, (n, P)), 0),
                           np.where(cmask, rng.integers(2, 64, (n, C)), 0)], 1).astype(np.int32)
  mask = np.concatenate([pmask, cmask], 1)
  pk = layout.pack(prompt_n, completion_n, layout.Trim(P, C), layout.row_buckets(n, 4))
  assert pk["unpack"].size < pk["pack_src"].size  # the head-on-completions branch
  w = rng.standard_normal((n, C)).astype(np.float32)

  def grad(g):
    def f(p, tokens, mask, pk, w):
      logp, ent = steps.completion_logprobs(g, p, tokens, mask, C, packing=pk)
      return jnp.sum(w * logp) + 0.1 * jnp.sum(ent)
    return jax.jit(jax.value_and_grad(f))
  _, g1 = models.with_attention(cfg)
  _, gm = models.with_attention(cfg, mesh=place.model_mesh())
  l1, d1 = grad(g1)(params, tokens, mask, pk, w)
  glob = {k: place.to_global(v, v.shape[0]) for k, v in pk.items()}
  margs = (place.put_params(params), *place.to_global((tokens, mask), n), glob,
           place.to_global(w, n))
  lm, dm = grad(gm)(*margs)
  # the gathered positions [B', K, D] are constrained to the batch split
  B = pk["pack_src"].shape[0]
  gathered = f"tensor<{B}x{-(-pk['unpack'].size // B)}x32xf32>"
  text = grad(gm).lower(*margs).as_text()
  return {"packed_gather_constrained": any(
              "sharding_constraint" in line and gathered in line for line in text.splitlines()),
          "packed_loss_diff": float(abs(l1 - lm)), "packed_grad_max_diff": max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(jax.tree.leaves(d1), jax.tree.leaves(dm)))}


def _measure():
  import jax
  from rlx.train.placement import Placement
  from rlx.train.config import base_config
  assert jax.device_count() == DEVICES
  c = base_config()
  c.mesh.axes = {"data": 1, "fsdp": 2, "tensor": 2}
  place = Placement(c)
  out = {"devices": jax.device_count()}
  out.update(_forward_diffs(place))
  out.update(_splash_diffs(place))
  out.update(_packed_diffs(place))
  out["plan"] = _plan_temps()
  c1 = base_config()
  c1.mesh.axes = {"data": 1, "fsdp": 1, "tensor": 1}
  out["one_device_model_mesh"] = repr(Placement(c1, jax.devices()[:1]).model_mesh())
  return out


@pytest.fixture(scope="module")
def mesh_results():
  return testing.run_on_devices([__file__], devices=DEVICES)


def test_model_mesh_from_the_rules(mesh_results):
  """Placement.model_mesh: 'batch' -> (data, fsdp), 'heads'/'kv_heads' -> tensor by the
  default rules; None on one device (1-device runs trace as before)."""
  assert mesh_results["devices"] == DEVICES
  assert mesh_results["model_mesh"] == [["data", "fsdp"], ["tensor"], ["tensor"]]
  assert mesh_results["one_device_model_mesh"] == "None"


@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_sharded_forward_equals_one_device(mesh_results, impl):
  """fsdp=2 x tensor=2 with the residual constraints: the logits of left-padded rows
  equal the 1-device forward's."""
  assert mesh_results[f"{impl}_max_abs"] > 0.1
  assert mesh_results[f"{impl}_max_diff"] < 1e-5


def test_residual_stream_is_split_over_the_batch(mesh_results):
  """The final hidden state of a full-length pass comes out split over (data, fsdp) rows,
  replicated otherwise; a pass with a KV cache (decode) has no such constraint (a batch
  split there makes XLA gather the fsdp-sharded head at every step)."""
  assert mesh_results["hidden_spec"][0] in ("fsdp", ["data", "fsdp"], ["fsdp"])
  assert all(a is None for a in mesh_results["hidden_spec"][1:])
  assert mesh_results["cache_constraints"] == 0


def test_splash_under_shard_map_equals_dense(mesh_results):
  """splash in the Pallas interpreter, run per device under shard_map (rows over fsdp,
  heads over tensor), with packing and padding: values and q/k/v gradients."""
  assert mesh_results["splash_max_diff"] < 1e-5


def test_packed_pass_with_long_prompts_on_the_mesh_equals_one_device(mesh_results):
  assert mesh_results["packed_loss_diff"] < 1e-5
  assert mesh_results["packed_grad_max_diff"] < 1e-5
  assert mesh_results["packed_gather_constrained"]


def test_residual_constraint_cuts_reference_pass_temporaries(mesh_results):
  """rlx.plan's compile of the reference pass on fsdp=4: with the model mesh the residual
  stream is constrained at the embedding and at the layer boundary (fewer temporaries:
  activations stay at a quarter of the rows); without it XLA keeps the fsdp-sharded
  width and gathers rows."""
  w, wo = mesh_results["plan"]["with"], mesh_results["plan"]["without"]
  assert w["constraints"] >= wo["constraints"] + 2
  assert w["temp"] < 0.6 * wo["temp"], (w, wo)


if __name__ == "__main__":
  print(json.dumps(_measure()))
