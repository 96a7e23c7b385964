"""End-to-end trainer tests: resume after SIGKILL, bad configs, flaky rewards."""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "configs", "tiny_rl.py")
VOLATILE = ("time/", "throughput/", "memory/")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  from rlx.data import TASKS
  rows = TASKS.get("arith")().make_examples(seed=0, n=40)
  path = tmp_path_factory.mktemp("data") / "arith.jsonl"
  with open(path, "w") as f:
    for i, r in enumerate(rows):
      f.write(json.dumps({k: r[k] for k in ("prompt", "answer", "max_len")}) + "\n")
      if i == 5:
        f.write("{not json\n")  # malformed rows are skipped, not fatal
      if i == 7:
        f.write(json.dumps({"answer": 3}) + "\n")  # no prompt
  return str(path)


def _cmd(workdir, data, *extra):
  return [sys.executable, "-m", "rlx.main", f"--config={CONFIG}:data={data}",
          f"--workdir={workdir}", *extra]


def _env():
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return env


def _metrics(workdir):
  from rlx.train.metrics import read_jsonl
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _wait_for_rows(proc, workdir, n, timeout=300):
  """Waits until workdir/metrics.jsonl has n rows (or the process ended)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(open(path).read().splitlines()) >= n:
      return
    time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_file):
  wd = str(tmp_path_factory.mktemp("run_a"))
  p = subprocess.run(_cmd(wd, data_file), env=_env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return wd


def test_run_writes_metrics_checkpoints_and_export(uninterrupted):
  rows = _metrics(uninterrupted)
  assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
  assert set(rows[0]) == {"step", "eval/correct", "eval/length", "eval/flaky", "eval/completion_length",
                          "data/train/rows", "data/eval/rows"}  # initial policy; row counts
  assert rows[0]["data/train/rows"] + rows[0]["data/eval/rows"] == 40  # 42 lines, 2 unreadable
  rows = rows[1:]
  for r in rows:
    assert 0.0 <= r["reward/correct/mean"] <= 1.0
    assert r["completion/length_mean"] <= 12
  # The flaky reward raised on some samples: they are missing, the run went on.
  assert sum(r["reward/flaky/raised"] for r in rows) > 0
  assert sum(r["reward/flaky/missing"] for r in rows) == sum(r["reward/flaky/raised"] for r in rows)
  assert "eval/correct" in rows[1] and "eval/correct" in rows[3]
  assert os.path.exists(os.path.join(uninterrupted, "rewards.png"))
  # The exported policy loads back with rlx and transformers.
  from transformers import AutoModelForCausalLM
  m = AutoModelForCausalLM.from_pretrained(os.path.join(uninterrupted, "hf"))
  assert m.config.vocab_size == 101


def test_sigkill_and_resume_gives_identical_metrics(uninterrupted, data_file, tmp_path):
  wd = str(tmp_path / "run_b")
  proc = subprocess.Popen(_cmd(wd, data_file), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  _wait_for_rows(proc, wd, 3)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  p = subprocess.run(_cmd(wd, data_file), env=_env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _metrics(wd) == _metrics(uninterrupted)


def test_half_written_checkpoint_is_ignored(tmp_path):
  import jax.numpy as jnp
  from rlx.train.checkpoint import Checkpointer
  ck = Checkpointer(str(tmp_path / "ck"), keep=3)
  state = {"w": jnp.arange(4.0)}
  ck.save(1, state, {"pos": 1})
  ck.wait()
  # What a kill during the save of step 2 leaves behind: a temporary directory.
  tmp = tmp_path / "ck" / "2.orbax-checkpoint-tmp-1234567"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "junk").write_text("partial")
  ck.close()
  ck = Checkpointer(str(tmp_path / "ck"), keep=3)
  assert ck.latest_step() == 1
  restored, data, _ = ck.restore(1, state)
  assert data == {"pos": 1}
  assert (restored["w"] == state["w"]).all()
  ck.close()


@pytest.mark.parametrize("override,needle", [
    ("--config.train.stepz=3", "unknown config key 'stepz'. Did you mean \"steps\""),
    ("--config.train.steps=abc", "--config.train.steps=abc: invalid literal"),
    ("--config.train.steps=-1", "config.train.steps must be >= 0, got -1"),
    ("--config.advantage.estimator=gdp0", "config.advantage.estimator: Unknown advantage "
     "estimator 'gdp0'. Did you mean 'gdpo'"),
    ("--config.sampling.group_size=3", "minibatches"),
])
def test_bad_config_fails_before_compute(override, needle, data_file, tmp_path):
  extra = [override]
  if "group_size" in override:
    extra.append("--config.train.minibatches=4")
  p = subprocess.run(_cmd(str(tmp_path / "wd"), data_file, *extra), env=_env(),
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 2, p.stderr[-2000:]
  assert needle in p.stderr and "Traceback" not in p.stderr
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")


def test_sigterm_saves_and_resume_matches(uninterrupted, data_file, tmp_path):
  wd = str(tmp_path / "run_c")
  proc = subprocess.Popen(_cmd(wd, data_file, "--config.train.ckpt_every=100"), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_rows(proc, wd, 1)  # the step-0 eval: the SIGTERM lands in an early step
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  from rlx.train.checkpoint import Checkpointer
  ck = Checkpointer(os.path.join(wd, "checkpoints"))
  saved = ck.latest_step()
  ck.close()
  assert saved is not None and 1 <= saved < 4  # saved on SIGTERM, before the end
  p = subprocess.run(_cmd(wd, data_file, "--config.train.ckpt_every=100"), env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _metrics(wd) == _metrics(uninterrupted)


def test_nan_loss_skips_the_update_and_counts_it():
  import jax
  import jax.numpy as jnp
  import optax
  from rlx import models
  from rlx.losses import LOSS_TERMS
  from rlx.train import steps

  @LOSS_TERMS.register("test_nan_if_negative_adv", overwrite=True)
  def nan_term(inputs):
    bad = jnp.any(inputs.advantages < 0)
    return jnp.where(bad, jnp.nan, 0.0) + 0.0 * inputs.logp_NT.sum(), {}

  cfg = models.ModelConfig.from_hf(dict(
      model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=32, hidden_size=16,
      intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
      max_position_embeddings=32, tie_word_embeddings=True))
  gd, params = models.init_model(cfg, jax.random.PRNGKey(0))
  tx = optax.adam(1e-2)
  upd = steps.make_update_fn(gd, tx, {"pg": {}, "test_nan_if_negative_adv": {"coef": 1.0}},
                             temperature=1.0, chunk=0, detached_old=True,
                             max_len=4, num_groups=2)
  N = 4
  batch = dict(tokens=jnp.ones((N, 8), jnp.int32), attn_mask=jnp.ones((N, 8), bool),
               loss_mask=jnp.ones((N, 4)), adv=jnp.ones((N,)), old_logp=jnp.zeros((N, 4)),
               sample_logp=jnp.zeros((N, 4)), ref_logp=jnp.zeros((N, 4)),
               correct=jnp.zeros((N,), bool), group=jnp.asarray([0, 0, 1, 1]),
               lengths=jnp.full((N,), 4))
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), skipped=jnp.zeros((), jnp.int32))
  before = jax.tree.map(jnp.copy, state.params)
  state, m = upd(state, dict(batch, adv=-jnp.ones((N,))))  # NaN loss: skipped
  assert float(m["skipped"]) == 1.0 and int(state.skipped) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    assert (a == b).all()
  state, m = upd(state, batch)  # finite: applied
  assert float(m["skipped"]) == 0.0 and int(state.skipped) == 1 and int(state.step) == 2
  assert any((a != b).any() for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))


def test_resume_with_another_model_fails_cleanly_and_keeps_the_run(uninterrupted, data_file,
                                                                   tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(uninterrupted, wd)
  before = _metrics(wd)
  p = subprocess.run(_cmd(wd, data_file, "--config.train.steps=6",
                          "--config.model.arch.hidden_size=64"),
                     env=_env(), capture_output=True, text=True, timeout=300)
  assert p.returncode == 2, p.stderr[-3000:]
  assert "rlx: The checkpoint of step 4 in" in p.stderr
  assert "does not match this run (Requested shape" in p.stderr
  assert "rlx/train/rl.py" not in p.stderr  # a message, not a traceback through the trainer
  assert _metrics(wd) == before  # nothing written: metrics and checkpoints as they were
  with open(os.path.join(wd, "config.1.json")) as f:  # the config the run was made with
    assert json.load(f)["model"]["arch"]["hidden_size"] == 32
