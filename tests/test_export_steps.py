"""TPU/GPU readiness: the jitted sample, reference-log-prob and update steps of a
tiny config export (jax.export) for tpu and cuda with the attention `auto`
picks there, on abstract shapes (no weights allocated): the steps the run
builds, as rlx.plan --platform exports them (rlx/train/abstract.py)."""
import jax
import jax.numpy as jnp

from rlx import models
from rlx.models import attention as attn
from rlx.train import abstract
from rlx.train.config import base_config

P, C, N = 128, 128, 2  # training T = P + C = 256: a splash-sized length


def _config():
  c = base_config()
  c.data.max_prompt_len, c.sampling.max_new_tokens = P, C
  c.train.batch_prompts, c.sampling.group_size = N, 1
  c.train.eval_every = 0
  c.model.logprob_chunk = 128
  c.loss.terms = {"pg": {"clip_low": 0.2, "clip_high": 0.2, "aggregation": "token_mean"},
                  "kl": {"coef": 0.04, "estimator": "k3"}}
  return c


def _exported(platform):
  """{step: StableHLO text} of the run's steps lowered for `platform`."""
  mcfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=272, hidden_size=128, intermediate_size=256, num_layers=1,
      num_heads=2, num_kv_heads=1, head_dim=64, dtype="bfloat16", param_dtype="bfloat16",
      attention="auto", attention_platform=platform, pad_token_id=0)
  run = abstract.abstract_run(_config(), mcfg, jax.devices()[:1])
  assert [s.name for s in run.steps] == ["sample", "ref_logprobs", "update"]
  return {s.name: abstract.export_step(s, platform).mlir_module() for s in run.steps}


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
