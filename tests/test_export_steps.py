"""TPU/GPU readiness: the jitted sample, reference-log-prob and update steps of a
tiny config export (jax.export) for tpu and cuda with the attention `auto`
picks there, on abstract shapes (no weights allocated)."""
import jax
import jax.numpy as jnp
import optax
import pytest
from jax import export

from rlx import models
from rlx.models import attention as attn
from rlx.sampling import SamplingSettings
from rlx.sampling import sampler as sampler_lib
from rlx.train import steps

P, C, N = 128, 128, 2  # training T = P + C = 256: a splash-sized length
TERMS = {"pg": {"clip_low": 0.2, "clip_high": 0.2, "aggregation": "token_mean"},
         "kl": {"coef": 0.04, "estimator": "k3"}}


def _model(platform):
  cfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=272, hidden_size=128, intermediate_size=256, num_layers=1,
      num_heads=2, num_kv_heads=1, head_dim=64, dtype="bfloat16", param_dtype="bfloat16",
      attention="auto", attention_platform=platform)
  return cfg, *models.abstract_model(cfg)


def _exported(platform):
  """{step: StableHLO text} of the three steps lowered for `platform`."""
  cfg, graphdef, params = _model(platform)
  sd = jax.ShapeDtypeStruct
  tokens, mask = sd((N, P + C), jnp.int32), sd((N, P + C), jnp.bool_)
  out = {}
  exp = lambda f, *a, **kw: export.export(f, platforms=[platform])(*a, **kw).mlir_module()
  settings = SamplingSettings(max_new_tokens=C, group_size=1, pad_token_id=0)
  key = jax.eval_shape(lambda: jax.random.key(0))
  out["sample"] = exp(sampler_lib._sample_jit, graphdef, params, sd((N, P), jnp.int32),
                      sd((N, P), jnp.bool_), key, settings=settings)
  out["ref_logprobs"] = exp(steps.make_logprobs_fn(graphdef, P, 1.0, 128), params, tokens, mask)
  tx = optax.adamw(1e-4)
  state = steps.TrainState(step=sd((), jnp.int32), params=params,
                           opt_state=jax.eval_shape(tx.init, params), skipped=sd((), jnp.int32))
  nc = sd((N, C), jnp.float32)
  batch = {"tokens": tokens, "attn_mask": mask, "loss_mask": sd((N, C), jnp.bool_),
           "adv": sd((N,), jnp.float32), "old_logp": nc, "sample_logp": nc, "ref_logp": nc}
  update = steps.make_update_fn(graphdef, tx, TERMS, temperature=1.0, chunk=128,
                                detached_old=True, max_len=C)
  out["update"] = exp(update, state, batch)
  return out


def test_steps_export_for_tpu_with_splash():
  """auto on tpu: splash for the 256-token training passes (static offset, multiples of
  128); the sampler's prefill and decode (traced cache index) take dense."""
  assert attn.auto_impl("tpu", dtype=jnp.bfloat16, T=P + C, S=P + C, E=64) == "splash"
  assert attn.auto_impl("tpu", dtype=jnp.bfloat16, T=P, S=P + C - 1, E=64,
                        static_offset=False) == "dense"
  text = _exported("tpu")
  assert "tpu_custom_call" not in text["sample"]
  assert "tpu_custom_call" in text["ref_logprobs"] and "tpu_custom_call" in text["update"]


def test_steps_export_for_cuda():
  """auto on cuda: cudnn with a GPU attached; without one (the cuDNN path does not trace
  then) what auto picks instead: dense at these lengths."""
  attached = any(d.platform == "gpu" for d in jax.devices())
  picked = attn.auto_impl("cuda", dtype=jnp.bfloat16, T=P + C, S=P + C, E=64,
                          gpu_attached=attached)
  assert picked == ("cudnn" if attached else "dense")
  text = _exported("cuda")
  for step in ("ref_logprobs", "update"):
    assert ("cudnn" in text[step]) == attached, step
