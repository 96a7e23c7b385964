"""rlx.plan: the memory plan against a measured run, a plan that does not fit,
LoRA vs full, bad input, the tpu lowering check.

"Measured" peak device memory (XLA:CPU has no allocator statistics:
`device.memory_stats()` is None): a real run of the config (random weights)
makes one warm-up RL step (compiles), then a second step under a reset
peak-RSS counter (/proc/self/clear_refs, VmHWM) with glibc's mmap threshold
fixed at 128 KiB, so every device buffer of that size or more is its own
mapping, counted while it lives and returned when freed. Measured = bytes of
the live device arrays before the step (`jax.live_arrays()`) + the rise of
the peak RSS above the RSS before the step. The rise includes the host's own
allocations during the step (tokenizing, scoring, NumPy copies): small next
to the device buffers of this config.
"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(model_type="qwen2", hidden_size=256, intermediate_size=2048, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
CONFIG = ("gdpo.py", "task=arith,batch_prompts=4,group_size=8")
OVERRIDES = {"model.init": "random", "model.arch": ARCH, "train.eval_every": 0}
SMALL = [f"--config=configs/{CONFIG[0]}:{CONFIG[1]}",
         *(f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in OVERRIDES.items())]


def _env(**kw):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", **kw)
  env.pop("XLA_FLAGS", None)
  return env


def _plan(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "rlx.plan", *SMALL, *args], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=timeout)


def _small_config():
  from rlx.train.config import load_config
  cfg = load_config(*CONFIG)
  cfg.update_from_flattened_dict(OVERRIDES)
  return cfg


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _measure(workdir: str) -> dict:
  """(runs in a fresh process) measured and planned peak bytes of the small config."""
  import gc

  import jax

  from rlx import plan
  from rlx.train import rl
  from rlx.train.rl_setup import setup_run
  cfg = _small_config()
  run, state, ref = setup_run(cfg, workdir, None)

  def step(i, state):
    key = jax.random.fold_in(run.base_key, i)
    groups = rl.collect_groups(run, state.params, ref, key, i)
    batch = rl.build_batch(run, groups)
    adv = rl.compute_advantages(run, batch)
    logprobs = rl.reference_and_old_logprobs(run, batch, groups, state.params, ref)
    state, _ = rl.run_updates(run, state, rl.update_batch(run, batch, adv, logprobs), key,
                              logprobs.trimmed.group_size)
    return jax.block_until_ready(state)

  state = step(0, state)  # compiles every step
  gc.collect()
  live = sum(x.nbytes for x in jax.live_arrays())
  rss0 = _status_kb("VmRSS") * 1024
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
  state = step(1, state)
  rise = _status_kb("VmHWM") * 1024 - rss0
  p = plan.plan(cfg, plan.model_config(cfg))
  return {"measured": live + rise, "predicted": p.peak, "live_before": live, "rise": rise,
          "plan_persistent": p.persistent, "plan_steps": {s.name: s.peak for s in p.steps}}


def test_plan_predicts_measured_peak(tmp_path):
  """The plan's peak of the small config is within 25% of the measured one."""
  if not os.access("/proc/self/clear_refs", os.W_OK):
    pytest.skip("needs Linux /proc/self/clear_refs (peak RSS reset)")
  out = subprocess.run([sys.executable, __file__, "measure", str(tmp_path)], cwd=ROOT,
                       env=_env(MALLOC_MMAP_THRESHOLD_="131072"), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  print(r)
  assert abs(r["predicted"] - r["measured"]) <= 0.25 * r["measured"], r




TINY = {"model.arch": dict(ARCH, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1)}


def test_plan_that_does_not_fit_exits_nonzero_naming_the_part():
  out = _plan(f"--config.model.arch={TINY['model.arch']!r}", "--hbm_gb=0.001")
  assert out.returncode == 1, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert any("XLA:CPU estimate" in ln for ln in lines)
  last = lines[-1]
  assert last.startswith("does not fit: peak "), last
  # The tiny update's activations dominate: the update's temporaries, with their knobs.
  assert "largest part: update (forward, backward, optimizer) temporaries" in last, last
  for knob in ("model.remat=full", "model.attention=blockwise", "train.minibatches",
               "train.batch_prompts / sampling.group_size", "mesh.axes"):
    assert knob in last, (knob, last)


def test_bad_input_is_a_one_line_config_error():
  for args, words in ((["--model=qwen9"], "Unknown model shape 'qwen9'. Valid choices: "),
                      (["--config.model.attention=splash"],
                       "attention implementation 'splash' needs platform tpu")):
    out = _plan(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlx: config error: ") and words in err[0], err


def _tiny_config(**kw):
  cfg = _small_config()
  cfg.model.arch = TINY["model.arch"]
  cfg.update_from_flattened_dict(kw)
  return cfg


def test_lora_plan_counts_adapters_frozen_base_and_no_reference():
  """LoRA rank 4 on q, v: parameters = the adapters, optimizer = their two AdamW
  moments, the frozen base = the full model, no reference copy; vs full fine-tuning."""
  import jax
  from rlx import plan
  cfg = _tiny_config(**{"model.lora.rank": 4, "model.lora.targets": "q,v"})
  mcfg = plan.model_config(cfg)
  lora = plan.plan(cfg, mcfg, jax.devices()[:1])
  cfg.model.lora.rank = 0
  full = plan.plan(cfg, mcfg, jax.devices()[:1])
  d, e, L, r = mcfg.hidden_size, mcfg.head_dim, mcfg.num_layers, 4
  adapters = 4 * L * ((d * r + r * mcfg.num_heads * e) + (d * r + r * mcfg.num_kv_heads * e))
  assert lora.parts["parameters"] == adapters
  assert abs(lora.parts["optimizer state"] - 2 * adapters) <= 64  # + the step counters
  assert full.parts["parameters"] == full.parts["reference"]
  assert 0 <= lora.parts["frozen base"] - full.parts["parameters"] <= 64  # + the dropout key
  assert "reference" not in lora.parts
  assert [s.name for s in lora.steps] == ["sample", "ref_logprobs", "update"]
  assert lora.persistent < 0.4 * full.persistent


def test_tpu_lowering_check_passes_on_a_small_config():
  import jax
  from rlx import plan
  cfg = _tiny_config(**{"data.max_prompt_len": 128, "sampling.max_new_tokens": 128,
                        "model.dtype": "bfloat16", "model.param_dtype": "bfloat16",
                        "train.batch_prompts": 2, "sampling.group_size": 2})
  lines, ok = plan.run_plan(cfg, None, 16.0, "tpu", jax.devices()[:1])
  text = "\n".join(lines)
  assert ok, text
  assert "tpu lowering (jax.export, platforms=['tpu'])" in text
  assert re.search(r"sample \(prefill \+ decode\)\s+ok\n", text), text
  for step in ("reference log-probs", "update (forward, backward, optimizer)"):
    assert re.search(rf"{re.escape(step)}\s+ok \(attention splash \(auto\)\)", text), (step, text)
  assert "training passes run splash (auto) on tpu" in text
  assert lines[-1].startswith("fits: ")


if __name__ == "__main__" and sys.argv[1:2] == ["measure"]:
  print(json.dumps(_measure(sys.argv[2])))
