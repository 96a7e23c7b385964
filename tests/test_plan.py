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
ARCH = dict(model_type="qwen2", hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
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
  for k, v in OVERRIDES.items():
    *path, last = k.split(".")
    node = cfg
    for p in path:
      node = node[p]
    node[last] = v
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
    state, _ = rl.run_updates(run, state, rl.update_batch(run, batch, adv, logprobs), key)
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


if __name__ == "__main__" and sys.argv[1:2] == ["measure"]:
  print(json.dumps(_measure(sys.argv[2])))
