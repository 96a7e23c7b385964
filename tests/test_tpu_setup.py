"""Dry runs of the tpu_setup scripts: the exact commands they would run."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "tpu_setup")
LOC = "--zone=us-east5-b"
INSTALL_STEPS = (
    "python3 -m pip install --user -q -U uv && {fetch} && cd ~/rlx && "
    "([ -x ~/rlx_venv/bin/python ] || ~/.local/bin/uv venv -q --python 3.11 ~/rlx_venv) && "
    '~/.local/bin/uv pip install -q --python ~/rlx_venv/bin/python -e ".[tpu]" -c constraints.txt'
    ' && ~/rlx_venv/bin/python -c "import jax, rlx; print(rlx.__name__, jax.__version__)"')


_SAFE_PATH: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _no_real_gcloud(tmp_path_factory):
  """Puts a `gcloud` that always fails first on PATH: a dry run must never call it."""
  bin_dir = tmp_path_factory.mktemp("fakebin")
  _write_exe(bin_dir / "gcloud", "#!/bin/bash\necho 'real gcloud called' >&2\nexit 99\n")
  _SAFE_PATH.append(f"{bin_dir}:{os.environ['PATH']}")
  yield
  _SAFE_PATH.clear()


def _run(script: str, args: tuple[str, ...], env: dict | None) -> subprocess.CompletedProcess:
  # --dry-run goes first: launch.py passes everything after `--` to rlx.main.
  return subprocess.run([sys.executable, os.path.join(SETUP, script), "--dry-run", *args],
                        capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PATH=_SAFE_PATH[0], **(env or {})))


def dry(script: str, *args: str, env: dict | None = None) -> list[str]:
  proc = _run(script, args, env)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines()


def fails(script: str, *args: str) -> str:
  proc = _run(script, args, None)
  assert proc.returncode != 0 and proc.stdout == ""
  return proc.stderr


def test_create_direct_and_queued():
  assert dry("create.py", "--name=rlx-v5e", "--zone=us-west4-a", "--project=my-proj",
             "--accelerator-type=v5litepod-8") == [
      "gcloud compute tpus tpu-vm create rlx-v5e --zone=us-west4-a --project=my-proj "
      "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite"]
  assert dry("create.py", "--name=rlx-v4", LOC, "--accelerator-type=v4-32", "--preemptible",
             "--version=tpu-custom") == [
      "gcloud compute tpus tpu-vm create rlx-v4 --zone=us-east5-b --accelerator-type=v4-32 "
      "--version=tpu-custom --preemptible"]
  assert dry("create.py", "--name=rlx-v6e", LOC, "--accelerator-type=v6e-16", "--queued",
             "--spot", "--wait", "--poll-s=10") == [
      "gcloud compute tpus queued-resources create rlx-v6e-qr --node-id=rlx-v6e "
      "--zone=us-east5-b --accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --spot",
      "bash -c 'while true; do s=$(gcloud compute tpus queued-resources describe rlx-v6e-qr "
      '--zone=us-east5-b --format="value(state.state)"); echo "queued resource rlx-v6e-qr: $s"; '
      'case "$s" in ACTIVE) exit 0;; FAILED|SUSPENDED|SUSPENDING) exit 1;; esac; sleep 10; done\'']
  # Multislice: two v5p-32 slices named rlx-0, rlx-1; name/zone from the environment.
  assert dry("create.py", "--accelerator-type=v5p-32", "--queued", "--slices=2",
             env={"RLX_TPU_NAME": "rlx", "RLX_TPU_ZONE": "us-east5-a"}) == [
      "gcloud compute tpus queued-resources create rlx-qr --node-count=2 --node-prefix=rlx "
      "--zone=us-east5-a --accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5"]


def test_create_errors():
  assert "--slices > 1 (multislice) needs --queued" in fails(
      "create.py", "--name=a", LOC, "--accelerator-type=v4-8", "--slices=2")
  assert "--name is required" in fails("create.py", LOC, "--accelerator-type=v4-8")
  assert "known generations: v6e, v5p" in fails("create.py", "--name=a", LOC,
                                                 "--accelerator-type=v9-8")
  assert "--zone is required" in fails("delete.py", "--name=a")


def test_install_from_local_checkout():
  fetch = "rm -rf ~/rlx && mkdir -p ~/rlx && tar -xzf ~/rlx-src.tar.gz -C ~/rlx"
  assert dry("install.py", "--name=rlx-v6e", LOC, "--source=/src/rlx",
             "--exclude=./runs") == [
      "tar -C /src/rlx --exclude=./.git --exclude=./.venv --exclude=./.hypothesis "
      "--exclude=__pycache__ '--exclude=*.egg-info' --exclude=.pytest_cache --exclude=./runs "
      "-czf /tmp/rlx-src-rlx-v6e.tar.gz .",
      "gcloud compute tpus tpu-vm scp /tmp/rlx-src-rlx-v6e.tar.gz rlx-v6e:rlx-src.tar.gz "
      "--zone=us-east5-b --worker=all",
      "gcloud compute tpus tpu-vm ssh rlx-v6e --zone=us-east5-b --worker=all "
      "'--command=" + INSTALL_STEPS.format(fetch=fetch) + "'"]


def test_install_from_git_on_two_slices():
  fetch = ("rm -rf ~/rlx && git clone -q https://github.com/me/rlx.git ~/rlx && "
           "git -C ~/rlx checkout -q v0.1")
  cmds = dry("install.py", "--name=rlx", LOC, "--slices=2",
             "--repo=https://github.com/me/rlx.git", "--ref=v0.1")
  assert cmds == [
      f"gcloud compute tpus tpu-vm ssh rlx-{i} --zone=us-east5-b --worker=all "
      "'--command=" + INSTALL_STEPS.format(fetch=fetch) + "'" for i in range(2)]


def test_install_tarball_really_excludes_git_and_venv(tmp_path):
  src = tmp_path / "src"
  for d in ("rlx", ".git", ".venv", "runs"):
    (src / d).mkdir(parents=True)
    (src / d / "f.txt").write_text(d)
  cmd = dry("install.py", "--name=t", LOC, f"--source={src}", "--exclude=./runs")[0]
  tarball = "/tmp/rlx-src-t.tar.gz"
  try:
    subprocess.run(cmd, shell=True, check=True)
    names = subprocess.run(["tar", "-tzf", tarball], capture_output=True, text=True,
                           check=True).stdout.split()
  finally:
    if os.path.exists(tarball):
      os.remove(tarball)
  assert "./rlx/f.txt" in names
  assert not [n for n in names if ".git" in n or ".venv" in n or "runs" in n]


def test_launch_same_flags_on_all_workers():
  cmds = dry("launch.py", "--name=rlx-v6e", LOC, "--config=configs/gdpo.py:task=toolcall",
             "--workdir=gs://bucket/runs/gdpo", "--env=XLA_FLAGS=--xla_foo", "--",
             "--config.train.steps=200", "--config.data.path=a b")
  assert cmds == [
      "gcloud compute tpus tpu-vm ssh rlx-v6e --zone=us-east5-b --worker=all "
      "'--command=cd ~/rlx && mkdir -p ~/rlx_logs && RLX_DISTRIBUTED=1 XLA_FLAGS=--xla_foo "
      "nohup ~/rlx_venv/bin/python -m rlx.main --config=configs/gdpo.py:task=toolcall "
      "--workdir=gs://bucket/runs/gdpo --config.train.steps=200 "
      "'\"'\"'--config.data.path=a b'\"'\"' > ~/rlx_logs/gdpo.log 2>&1 < /dev/null & "
      "echo $! > ~/rlx_logs/gdpo.pid'"]
  cmds = dry("launch.py", "--name=rlx", LOC, "--slices=2", "--config=configs/base.py",
             "--workdir=/tmp/w", "--run-name=r1")
  assert len(cmds) == 2 and cmds[1].startswith("gcloud compute tpus tpu-vm ssh rlx-1 ")
  assert cmds[0].endswith("> ~/rlx_logs/r1.log 2>&1 < /dev/null & echo $! > ~/rlx_logs/r1.pid'")
  assert "--env takes KEY=VALUE" in fails("launch.py", "--name=a", LOC, "--config=c",
                                          "--workdir=w", "--env=oops")


def test_logs_stop_and_delete():
  assert dry("logs.py", "--name=rlx-v6e", LOC, "--run-name=gdpo") == [
      "gcloud compute tpus tpu-vm ssh rlx-v6e --zone=us-east5-b --worker=0 "
      "'--command=tail -n 100 -F ~/rlx_logs/gdpo.log'"]
  assert dry("logs.py", "--name=rlx", LOC, "--slices=2", "--slice=1", "--worker=3",
             "--run-name=gdpo", "--lines=20", "--no-follow") == [
      "gcloud compute tpus tpu-vm ssh rlx-1 --zone=us-east5-b --worker=3 "
      "'--command=tail -n 20 ~/rlx_logs/gdpo.log'"]
  assert dry("logs.py", "--name=rlx-v6e", LOC, "--run-name=gdpo", "--stop") == [
      "gcloud compute tpus tpu-vm ssh rlx-v6e --zone=us-east5-b --worker=all "
      "'--command=if [ -f ~/rlx_logs/gdpo.pid ]; then kill $(cat ~/rlx_logs/gdpo.pid) "
      "2>/dev/null || true; rm -f ~/rlx_logs/gdpo.pid; fi'"]
  assert dry("delete.py", "--name=rlx-v6e", LOC) == [
      "gcloud compute tpus tpu-vm delete rlx-v6e --zone=us-east5-b --quiet"]
  assert dry("delete.py", "--name=rlx-v6e", LOC, "--queued", "--project=p") == [
      "gcloud compute tpus queued-resources delete rlx-v6e-qr --zone=us-east5-b --project=p "
      "--force --quiet"]


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("explicit", [False, True])
def test_slurm_script_runs_one_rlx_process_per_task(tmp_path, explicit):
  """Runs the sbatch script with fake srun/scontrol/python and checks what each task runs."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # Fake srun: runs the task command once per task with SLURM_PROCID set.
  _write_exe(bin_dir / "srun", '#!/bin/bash\nfor i in 0 1; do SLURM_PROCID=$i "$@"; done\n')
  _write_exe(bin_dir / "scontrol", "#!/bin/bash\nprintf 'gpu-a\\ngpu-b\\n'\n")
  _write_exe(tmp_path / "python",
             '#!/bin/bash\necho "task ${SLURM_PROCID}: ${RLX_COORDINATOR:-auto} '
             '${RLX_NUM_PROCESSES:-auto} ${RLX_PROCESS_ID:-auto} | $*"\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CONFIG="configs/gdpo.py",
             WORKDIR="/shared/w", PYTHON=str(tmp_path / "python"), RLX_DIR=str(tmp_path),
             SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_NTASKS="2", RLX_EXPLICIT=str(int(explicit)))
  for k in ("RLX_COORDINATOR", "RLX_NUM_PROCESSES", "RLX_PROCESS_ID"):
    env.pop(k, None)
  proc = subprocess.run(["bash", os.path.join(SETUP, "slurm_gpu.sbatch"),
                         "--config.train.steps=5"], env=env, capture_output=True, text=True,
                        timeout=30)
  assert proc.returncode == 0, proc.stderr
  argv = "-m rlx.main --config=configs/gdpo.py --workdir=/shared/w --config.train.steps=5"
  if explicit:
    assert proc.stdout.splitlines() == [f"task {i}: gpu-a:12355 2 {i} | {argv}" for i in range(2)]
  else:
    assert proc.stdout.splitlines() == [f"task {i}: auto auto auto | {argv}" for i in range(2)]


def test_real_run_stops_at_first_failing_command():
  """Without --dry-run the commands run in order; the (fake) gcloud fails with 99."""
  proc = subprocess.run([sys.executable, os.path.join(SETUP, "delete.py"), "--name=a", LOC,
                         "--slices=2"], capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PATH=_SAFE_PATH[0]))
  assert proc.returncode == 99
  assert "+ gcloud compute tpus tpu-vm delete a-0 --zone=us-east5-b --quiet" in proc.stderr
  assert "a-1" not in proc.stderr
  assert "command failed with exit code 99" in proc.stderr
