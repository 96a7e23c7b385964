"""The RL trainer on a device mesh and across processes (simulated CPU devices).

Subprocesses (tests/parallel_train_worker.py, which is also the config they
run: tests/configs/tiny_rl.py with 4 prompts and 4 updates a step, Adam eps
1e-4 and position-independent rewards) are started together by one fixture:

  A  8 devices: one RL step (sampler + update) on a 2x2x2 (data, fsdp, tensor)
     mesh vs a 1-device mesh (and the sampler with tail_rows on the mesh), then `train_rl` for 2 steps on the 2x2x2 mesh;
  B  1 device: `python -m rlx.main` for 3 steps (the reference);
  C  2 processes x 2 devices (jax.distributed, gloo), mesh data=2 x tensor=2:
     `rlx.main` for 3 steps, checkpoint every step;
  E  1 process x 2 devices, mesh fsdp=2: resumes C's step-2 checkpoint and
     trains step 3;
  P  2 processes x 2 devices: Placement's host <-> global conversions.

Metrics are compared without time/, throughput/ and memory/ keys to an
absolute 1e-5 plus relative 1e-4 tolerance: reductions over the batch and over
sharded hidden dimensions run in a different order on each mesh, so fp32
results differ by a few ulps (measured <= 3.6e-7 absolute over 4 steps); the
sampled tokens are identical, so the runs do not drift apart.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel_train_worker.py")
TINY_RL = os.path.join(ROOT, "tests", "configs", "tiny_rl.py")
VOLATILE = ("time/", "throughput/", "memory/")
ATOL, RTOL = 1e-5, 1e-4
TIMEOUT = 600


def _env(devices: int, process: int | None = None, processes: int = 1,
         port: int | None = None) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices} "
                        "--xla_cpu_multi_thread_eigen=false"))
  for k in ("RLX_COORDINATOR", "RLX_NUM_PROCESSES", "RLX_PROCESS_ID", "RLX_DISTRIBUTED"):
    env.pop(k, None)
  if process is not None:
    env.update(RLX_COORDINATOR=f"127.0.0.1:{port}", RLX_NUM_PROCESSES=str(processes),
               RLX_PROCESS_ID=str(process))
  return env


class _Job:
  """Processes started together (one per JAX process), logs in files."""

  def __init__(self, name: str, args: list[str], devices: int, logdir: str,
               processes: int = 1):
    port = None
    if processes > 1:
      import portpicker  # pylint: disable=g-import-not-at-top
      port = portpicker.pick_unused_port()
    self.name, self.logs, self.procs = name, [], []
    for pid in range(processes):
      log = os.path.join(logdir, f"{name}.{pid}.log")
      self.logs.append(log)
      env = _env(devices, pid if processes > 1 else None, processes, port)
      with open(log, "w") as f:
        self.procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT,
                                           stdout=f, stderr=subprocess.STDOUT))

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def wait(self) -> None:
    for p, log in zip(self.procs, self.logs):
      try:
        rc = p.wait(timeout=TIMEOUT)
      except subprocess.TimeoutExpired:
        self.kill()
        raise
      if rc != 0:
        self.kill()
        with open(log) as f:
          tail = f.read()[-4000:]
        raise AssertionError(f"job {self.name} ({log}) exited with {rc}:\n{tail}")

  def log(self, i: int = 0) -> str:
    with open(self.logs[i]) as f:
      return f.read()


def _cli(workdir: str, data: str, steps: int, *flags: str) -> list[str]:
  return [WORKER, "cli", workdir + ".probe", "--", f"--config={WORKER}:data={data},steps={steps}",
          f"--workdir={workdir}", *flags]


def _metrics(workdir: str) -> dict[int, dict[str, float]]:
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      out.setdefault(row["step"], [])
      out[row["step"]].append({k: float(v) for k, v in row.items()
                               if not k.startswith(VOLATILE)})
  assert all(len(v) == 1 for v in out.values()), f"steps written twice: {sorted(out)}"
  return {k: v[0] for k, v in out.items()}


def _max_diff(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
  """Largest |a - b| / (ATOL + RTOL |b|) over the keys (NaN == NaN)."""
  assert set(a) == set(b), sorted(set(a) ^ set(b))
  worst = (0.0, "")
  for k in a:
    if math.isnan(a[k]) and math.isnan(b[k]):
      continue
    worst = max(worst, (abs(a[k] - b[k]) / (ATOL + RTOL * abs(b[k])), k))
  return worst


def _assert_rows_close(a, b, steps):
  for s in steps:
    ratio, key = _max_diff(a[s], b[s])
    assert ratio <= 1.0, (s, key, a[s][key], b[s][key])


def _probe(workdir: str, process: int = 0) -> dict:
  with open(f"{workdir}.probe.{process}") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  from rlx.data import TASKS  # pylint: disable=g-import-not-at-top
  rows = TASKS.get("arith")().make_examples(seed=0, n=40)
  path = tmp_path_factory.mktemp("data") / "arith.jsonl"
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps({k: r[k] for k in ("prompt", "answer", "max_len")}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_file):
  """Starts A, B, C, P together, then E after C; returns workdirs and results."""
  root = str(tmp_path_factory.mktemp("parallel_train"))
  wd = {k: os.path.join(root, k) for k in "ABCE"}
  jobs = {
      "A": _Job("A", [WORKER, "pieces", os.path.join(root, "pieces.json"), data_file, wd["A"]],
                devices=8, logdir=root),
      "C": _Job("C", _cli(wd["C"], data_file, 3, "--config.mesh.axes.data=2",
                          "--config.mesh.axes.tensor=2"),
                devices=2, logdir=root, processes=2),
      "B": _Job("B", _cli(wd["B"], data_file, 3, "--config.mesh.axes.data=1"), devices=1,
                logdir=root),
      "P": _Job("P", [WORKER, "placement", os.path.join(root, "placement.json")], devices=2,
                logdir=root, processes=2),
  }
  try:
    jobs["C"].wait()
    # E: C's workdir as it was after step 2 (checkpoint 3 removed).
    shutil.copytree(wd["C"], wd["E"])
    for d in ("checkpoints/3", "hf"):
      shutil.rmtree(os.path.join(wd["E"], d))
    jobs["E"] = _Job("E", _cli(wd["E"], data_file, 3, "--config.mesh.axes.data=1",
                               "--config.mesh.axes.fsdp=2"), devices=2, logdir=root)
    for name in "ABPE":
      jobs[name].wait()
  finally:  # no process outlives a failure
    for job in jobs.values():
      job.kill()
  with open(os.path.join(root, "pieces.json")) as f:
    pieces = json.load(f)
  placement = []
  for pid in range(2):
    with open(os.path.join(root, f"placement.json.{pid}")) as f:
      placement.append(json.load(f))
  return dict(wd=wd, jobs=jobs, pieces=pieces, placement=placement)


def _check_sharded_rl_step_matches_one_device(runs):
  r = runs["pieces"]
  assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert r["one_mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  # Sampling: identical tokens, log-probs to fp32 rounding.
  assert r["tokens_equal"]
  assert r["sample_logp_diff"] <= ATOL
  # sampling.tail_rows (2 of 8 rows) on the 2x2x2 mesh: the same rollout as all rows.
  assert r["tail_engaged"] and r["tail_tokens_equal"] and r["tail_logp_diff"] <= ATOL
  # Loss, gradients, update metrics and the params after two Adam updates.
  assert abs(r["loss"]) > 1e-3 and r["loss_diff"] <= ATOL
  assert r["grad_max"] > 1e-3 and r["grad_diff"] <= ATOL
  assert r["param_change"] > 1e-3 and r["param_diff"] <= ATOL
  assert r["metrics_diff"] <= ATOL and r["metrics2_diff"] <= ATOL
  # Params and gradients are sharded: fsdp over the width, tensor over the
  # MLP units and heads; 101 vocab rows do not split over tensor=2.
  for shards in (r["shards"], r["grad_shards"]):
    assert shards["layers/up/value"] == [[2, 32, 64], [2, 16, 32], 8]
    assert shards["layers/down/value"] == [[2, 64, 32], [2, 32, 16], 8]
    assert shards["layers/q/value"] == [[2, 32, 2, 16], [2, 16, 1, 16], 8]
    assert shards["embed/value"] == [[101, 32], [101, 16], 8]


def _check_train_rl_on_2x2x2_mesh_matches_one_device(runs):
  a, b = _metrics(runs["wd"]["A"]), _metrics(runs["wd"]["B"])
  assert sorted(a) == [0, 1, 2] and sorted(b) == [0, 1, 2, 3]
  _assert_rows_close(a, b, [0, 1, 2])  # 0: eval of the initial policy
  assert "eval/correct" in a[2]
  probe = _probe(runs["wd"]["A"])
  assert probe["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  # During the run: params and Adam moments in shards, before and after the
  # update (the step keeps the layout); minibatches split over data x fsdp.
  assert probe["params"]["layers/up/value"] == [[2, 32, 64], [2, 16, 32], 8]
  assert probe["new_params"] == probe["params"]
  mu = [v for k, v in probe["opt_state"].items() if k.endswith("layers/up/value")]
  assert mu and all(v == [[2, 32, 64], [2, 16, 32], 8] for v in mu)
  # A minibatch of 8 completions, trimmed to length buckets (<= P + C = 52 columns).
  w = probe["batch_tokens"][0][1]
  assert w <= 52 and probe["batch_tokens"] == [[8, w], [2, w], 8]
  ref = _probe(runs["wd"]["B"])
  assert ref["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  assert ref["params"]["layers/up/value"] == [[2, 32, 64], [2, 32, 64], 1]


def _check_two_processes_train_like_one_device(runs):
  c, b = _metrics(runs["wd"]["C"]), _metrics(runs["wd"]["B"])
  assert sorted(c) == [0, 1, 2, 3]  # process 0 alone writes (no duplicated rows)
  _assert_rows_close(c, b, [0, 1, 2, 3])
  # The scorer's counts are summed over both processes' completions.
  assert sum(c[s]["reward/flaky/raised"] for s in range(1, 4)) > 0
  for s in range(1, 4):
    assert c[s]["reward/flaky/raised"] == b[s]["reward/flaky/raised"]
  for pid in range(2):
    probe = _probe(runs["wd"]["C"], pid)
    assert probe["process_count"] == 2 and probe["local_devices"] == 2
    assert probe["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert probe["params"]["layers/up/value"] == [[2, 32, 64], [2, 32, 32], 2]
    w = probe["batch_tokens"][0][1]  # trimmed to length buckets
    assert w <= 52 and probe["batch_tokens"] == [[8, w], [4, w], 2]  # 4 rows on each process
  assert "process 1 of 2" in runs["jobs"]["C"].log(1)
  assert not os.path.exists(runs["wd"]["C"] + ".probe.2")


def _check_resume_on_another_mesh_continues_the_two_process_run(runs):
  c, e = _metrics(runs["wd"]["C"]), _metrics(runs["wd"]["E"])
  assert sorted(e) == [0, 1, 2, 3]
  assert "Resumed from step 2" in runs["jobs"]["E"].log()
  for s in (0, 1, 2):  # kept from the two-process run
    assert _max_diff(e[s], c[s])[0] == 0.0
  _assert_rows_close(e, c, [3])
  assert "eval/correct" in e[3]
  probe = _probe(runs["wd"]["E"])
  assert probe["process_count"] == 1 and probe["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
  assert probe["params"]["layers/up/value"] == [[2, 32, 64], [2, 16, 64], 2]
  # Both final exports (process 0 of the sharded two-process run, and the
  # resumed run) hold the same policy.
  from rlx.models import hf_io  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _, _, pc = hf_io.load_hf(os.path.join(runs["wd"]["C"], "hf"))
  _, _, pe = hf_io.load_hf(os.path.join(runs["wd"]["E"], "hf"))
  _, _, p0 = hf_io.load_hf(os.path.join(runs["wd"]["A"], "hf"))
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(pc), jax.tree.leaves(pe)))
  moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(jax.tree.leaves(pc), jax.tree.leaves(p0)))
  assert diff <= ATOL and moved > 1e-3


def _check_placement_conversions_across_processes(runs):
  x = np.arange(24, dtype=np.float32).reshape(8, 3)
  w = np.arange(32, dtype=np.float32).reshape(4, 8)
  for pid, r in enumerate(runs["placement"]):
    assert r["process"] == pid
    # Batch axes over the processes: 4 rows each; tensor parallelism across
    # processes: every process holds (and feeds) all 8 rows.
    for name, rows, cols in (("split", [4 * pid, 4 * pid + 4], 4),
                             ("replicated_rows", [0, 8], 2)):
      m = r[name]
      assert m["rows"] == rows
      assert m["sum"] == x.sum()
      np.testing.assert_array_equal(m["to_local"], 2 * x[rows[0]:rows[1]])
      np.testing.assert_array_equal(m["gather"], x[:, 0])  # each row once, in order
      assert m["count"] == 8  # per-process counts summed once per distinct block
      np.testing.assert_array_equal(m["fetch"], w)
      assert m["w_shard_cols"] == cols and m["replicated"]


def test_trainer_on_meshes_and_processes(runs):
  # One test over one set of subprocesses (under `pytest -n 2` separate tests
  # could each start them in another worker).
  _check_sharded_rl_step_matches_one_device(runs)
  _check_train_rl_on_2x2x2_mesh_matches_one_device(runs)
  _check_two_processes_train_like_one_device(runs)
  _check_resume_on_another_mesh_continues_the_two_process_run(runs)
  _check_placement_conversions_across_processes(runs)


def _main(tmp_path, data, name, devices, *flags):
  return subprocess.Popen(
      [sys.executable, "-m", "rlx.main", f"--config={TINY_RL}:data={data}",
       f"--workdir={tmp_path / name}", *flags], env=_env(devices), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mesh_and_batch_errors_name_the_config_keys(tmp_path, data_file):
  procs = {
      "mesh": _main(tmp_path, data_file, "mesh", 2, "--config.mesh.axes.data=3"),
      "batch": _main(tmp_path, data_file, "batch", 2, "--config.mesh.axes.data=2",
                     "--config.train.batch_prompts=3"),
      "eval": _main(tmp_path, data_file, "eval", 4, "--config.mesh.axes.data=4",
                    "--config.train.batch_prompts=8", "--config.eval.batch_prompts=6"),
  }
  out = {}
  for name, p in procs.items():
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode != 0, name
    out[name] = err
    assert not os.path.exists(tmp_path / name / "checkpoints")
    assert "rlx: config error:" in err and "Traceback" not in err, err[-2000:]
  assert ("config.mesh.axes {'data': 3, 'fsdp': 1, 'tensor': 1} multiply to 3 but there are "
          "2 devices") in out["mesh"]
  assert ("config.train.batch_prompts: batch size 3 does not divide across the data axes "
          "(data=2, fsdp=1: 2 shards); use a multiple of 2, e.g. 2 or 4") in out["batch"]
  assert ("config.eval.batch_prompts: batch size 6 does not divide across the data axes "
          "(data=4, fsdp=1: 4 shards); use a multiple of 4, e.g. 4 or 8") in out["eval"]
