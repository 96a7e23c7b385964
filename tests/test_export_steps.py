"""TPU/GPU readiness: the jitted sample, reference-log-prob and update steps of a
tiny config export (jax.export) for tpu and cuda with the attention `auto`
picks there, on abstract shapes (no weights allocated): the steps the run
builds, as rlx.plan --platform exports them (rlx/train/abstract.py). On a mesh of
4 simulated devices (a subprocess: this file run as a script) splash runs under
shard_map."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from rlx import models
from rlx import testing
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


def _exported(platform, axes=None, kv_heads=1):
  """{step: StableHLO text} of the run's steps lowered for `platform` on a mesh of
  `axes` (default one device)."""
  mcfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=272, hidden_size=128, intermediate_size=256, num_layers=1,
      num_heads=2, num_kv_heads=kv_heads, head_dim=64, dtype="bfloat16",
      param_dtype="bfloat16", attention="auto", attention_platform=platform, pad_token_id=0)
  cfg = _config()
  n = 1
  if axes:
    cfg.mesh.axes = axes
    n = int(np.prod(list(axes.values())))
  run = abstract.abstract_run(cfg, mcfg, jax.devices()[:n])
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


def _kernel_operands(text):
  """The operand types of the splash kernel's custom calls (q, k, v among them)."""
  return sorted({m for m in re.findall(r"tpu_custom_call.*?:\s*\((tensor<[^)]*)\)", text)})


def _mesh_exports():
  """Run as a script with 4 simulated devices: the tpu exports on two meshes."""
  out = {}
  for name, axes, kv in (("fsdp2_tensor2", {"data": 1, "fsdp": 2, "tensor": 2}, 2),
                         ("fsdp2_tensor2_kv1", {"data": 1, "fsdp": 2, "tensor": 2}, 1)):
    try:
      text = _exported("tpu", axes, kv)
    except Exception as e:  # noqa: BLE001  (the parent asserts on it)
      out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
      continue
    out[name] = {step: {"kernel": "tpu_custom_call" in t,
                        "shard_map": t.count("sdy.manual_computation"),
                        "operands": _kernel_operands(t)} for step, t in text.items()}
  return out


def test_steps_export_for_tpu_with_splash_on_a_mesh():
  """On 4 simulated devices (fsdp=2 x tensor=2) the Mosaic kernel, which XLA cannot
  partition, runs under shard_map: each device on its row (N = 2 over fsdp) and, when
  the KV heads split over tensor too, its query/KV head; with 1 KV head (not divisible
  by tensor=2) heads stay whole. Before, both steps failed: 'Mosaic kernels cannot be
  automatically partitioned. Please wrap the call in a shard_map.'"""
  r = testing.run_on_devices([__file__], devices=4)
  for name in ("fsdp2_tensor2", "fsdp2_tensor2_kv1"):
    assert "error" not in r[name], r[name]
    assert not r[name]["sample"]["kernel"]  # traced cache index: dense
    for step in ("ref_logprobs", "update"):
      assert r[name][step]["kernel"] and r[name][step]["shard_map"] >= 1, (name, step)
  # The kernel's per-row q/k/v blocks [heads, T, E]: 1 of 2 heads per device when
  # heads split over tensor, both heads (q) and the 1 KV head otherwise.
  split = r["fsdp2_tensor2"]["ref_logprobs"]["operands"][0]
  whole = r["fsdp2_tensor2_kv1"]["ref_logprobs"]["operands"][0]
  assert "tensor<1x256x64xbf16>, tensor<1x256x64xbf16>, tensor<1x256x64xbf16>" in split
  assert "tensor<2x256x64xbf16>, tensor<1x256x64xbf16>, tensor<1x256x64xbf16>" in whole


if __name__ == "__main__":
  print(json.dumps(_mesh_exports()))
