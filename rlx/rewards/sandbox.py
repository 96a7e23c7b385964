"""Sandboxed execution of untrusted Python programs (for code rewards).

Every program runs in its own short-lived process tree, started by a small
launcher (`python -I -S -B -c _BOOTSTRAP jobdir`, no `preexec_fn`, so it is
safe to start from many threads). The launcher applies, in order:

1. Namespaces (Linux, needs root/CAP_SYS_ADMIN; probed once, see below):
   - network (`CLONE_NEWNET`): only a down loopback, so no socket can reach
     the host or the outside world;
   - mount (`CLONE_NEWNS`): fresh size-limited tmpfs over /tmp, /var/tmp,
     /dev/shm and /run/lock, so writes to world-writable places stay private
     and vanish with the program; the working directory is an empty
     directory on that tmpfs;
   - PID + IPC (`CLONE_NEWPID | CLONE_NEWIPC`): the program runs under a tiny
     init (pid 1, root) with a private /proc. When the program exits or is
     killed, init exits and the kernel kills every process left in the
     namespace: nothing survives a run (fork bombs, daemons, setsid escapes).
2. Resource limits (`setrlimit`): CPU seconds, address space (RLIMIT_AS),
   file size, open files, no core dumps, and RLIMIT_NPROC.
3. Privilege drop when running as root: setuid/setgid to a uid unique to this
   run (`uid_base + slot`), so RLIMIT_NPROC (per user) bounds fork bombs,
   the program cannot signal the trainer, init or other programs, cannot read
   other processes' /proc/PID/environ, and cannot write root-owned files.
   The interpreter for programs must then have a world-readable standard
   library; the probe picks the first candidate that works (the host's
   `sys.executable`, else /usr/bin/python3, ...).
4. A minimal environment (PATH, LANG, HOME; no inherited variables), `-I -S`
   (isolated mode, no site-packages unless `site_packages=True`).

The host side enforces the wall-clock limit and an output cap (both stdout
and stderr are read incrementally; the program is killed once either passes
`max_output_bytes`), then kills the launcher's process group and, when a uid
was dropped to, every remaining process of that uid (a safety net behind the
PID namespace). The job directory on the host is removed after every run.

Fallbacks (detected by `capabilities()`, reported in `Capabilities`): without
root none of the namespaces nor the uid drop are available; then the program
still gets the rlimits (RLIMIT_NPROC counts all processes of the user), a new
session whose process group is killed at the end plus a sweep of the session,
an empty temporary working directory, a minimal environment and the output
cap; the final sweep kills the session and every process whose command line
names the run's job directory (forked children). The program could then open
sockets, write where the user may write, signal processes of the same user
(including the trainer), and escape the final kill with `setsid` + `exec`.
As root with `isolate=False`, RLIMIT_NPROC does not apply: no fork-bomb bound.

A program's result is an `ExecResult` with a `status`:
  ok             exited normally (for assert tests: every assert ran and held)
  failed         assert-style test raised AssertionError (wrong answer)
  compile_error  the program does not compile (SyntaxError, ...)
  runtime_error  uncaught exception, nonzero exit, or killed by a signal
  memory_limit   MemoryError (RLIMIT_AS reached)
  timeout        CPU or wall-clock limit reached
  output_limit   stdout or stderr exceeded `max_output_bytes`
  bad_test       the test code itself does not compile (a data problem)
  sandbox_error  the sandbox could not run the program (infrastructure)
Nothing here raises because of a program; host-side failures become
`sandbox_error` results.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

from rlx.rewards.sandbox_launcher import BOOTSTRAP as _BOOTSTRAP
from rlx.rewards.sandbox_launcher import LAUNCHER as _LAUNCHER
from rlx.rewards.sandbox_procs import kill_all, live_processes, uid_pool

log = logging.getLogger(__name__)

# Harness exit codes (the launcher's own protocol).
EXIT_COMPILE_ERROR = 81
EXIT_TEST_FAILED = 82
EXIT_BAD_TEST = 83
EXIT_SANDBOX = 85

STATUSES = ("ok", "failed", "compile_error", "runtime_error", "memory_limit",
            "timeout", "output_limit", "bad_test", "sandbox_error")
# Statuses that count as a bug (any compile or runtime error) in code rewards.
BUG_STATUSES = frozenset(
    {"compile_error", "runtime_error", "memory_limit", "timeout", "output_limit"})

_PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits and isolation switches for one program run.

  Attributes:
    cpu_time_s: RLIMIT_CPU (seconds of CPU time; SIGXCPU, then SIGKILL 1 s later).
    wall_time_s: wall-clock limit enforced by the host (from process start).
    memory_mb: RLIMIT_AS (virtual address space) in MiB.
    max_processes: RLIMIT_NPROC (processes + threads of the run's uid).
    file_size_mb: RLIMIT_FSIZE in MiB (largest file the program may write).
    tmpfs_mb: size of each private tmpfs (working dir, /tmp, ...), in MiB.
    max_open_files: RLIMIT_NOFILE.
    max_output_bytes: cap on each of stdout and stderr; beyond it the program
      is killed with status `output_limit`.
    python: interpreter for programs; None picks one automatically.
    site_packages: allow the interpreter's site-packages (drops `-S`).
    isolate: use namespaces and the uid drop when available. `False` runs with
      rlimits, session kill and a temp dir only.
    uid_base: start of the range of per-run uids (when root), see sandbox_procs.UID_RANGE.
    base_dir: where host-side job directories are created (default: tempdir).
  """
  cpu_time_s: float = 2.0
  wall_time_s: float = 5.0
  memory_mb: int = 512
  max_processes: int = 16
  file_size_mb: int = 8
  tmpfs_mb: int = 32
  max_open_files: int = 64
  max_output_bytes: int = 1 << 20
  python: str | None = None
  site_packages: bool = False
  isolate: bool = True
  uid_base: int = 1_500_000_000
  base_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What the sandbox can use on this machine (from a one-time probe)."""
  python: str
  net: bool  # network namespace
  fs: bool  # mount namespace with private tmpfs dirs
  pid: bool  # PID (+IPC) namespace with private /proc
  drop_uid: bool  # per-run unprivileged uid
  note: str = ""


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """Outcome of one program run (see module docstring for `status`)."""
  status: str
  returncode: int | None
  stdout: str
  stderr: str
  wall_s: float

  @property
  def bug(self) -> bool:
    return self.status in BUG_STATUSES


@dataclasses.dataclass(frozen=True)
class Job:
  """One program run: `code` with `stdin` (stdio test), or `code` followed by
  assert-style `test` code run in the same namespace (stdin is empty)."""
  code: str
  stdin: str | None = None
  test: str | None = None
  config: SandboxConfig | None = None


# --------------------------------------------------------------------------
# Host side.
# --------------------------------------------------------------------------
def _stdlib_probe_code() -> str:
  return ("import json, collections, re, math, itertools, functools, heapq, "
          "fractions, decimal, string, random, bisect\nprint('rlx-probe-ok')\n")


def _python_candidates(config: SandboxConfig) -> list[str]:
  if config.python:
    return [config.python]
  cands = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
  out = []
  for c in cands:
    if c and os.path.exists(c) and c not in out:
      out.append(c)
  return out


_CAPS: dict[tuple, Capabilities] = {}
_CAPS_LOCK = threading.Lock()


def capabilities(config: SandboxConfig = SandboxConfig()) -> Capabilities:
  """Probes (once per interpreter choice) which isolation features work."""
  key = (config.python, config.site_packages, config.isolate, config.uid_base,
         config.base_dir)
  with _CAPS_LOCK:
    if key in _CAPS:
      return _CAPS[key]
    caps = _probe(config)
    _CAPS[key] = caps
    if config.isolate and not (caps.net and caps.fs and caps.pid and caps.drop_uid):
      log.warning("rlx sandbox runs with reduced isolation: %s", caps)
    return caps


def _probe(config: SandboxConfig) -> Capabilities:
  cands = _python_candidates(config)
  is_root = os.geteuid() == 0
  want = dict(net=config.isolate, fs=config.isolate, pid=config.isolate)
  notes = []
  for python in cands:
    caps = Capabilities(python, False, False, False, False)
    uid = uid_pool(config.uid_base).acquire() if (config.isolate and is_root) else None
    res, got = _execute(Job(_stdlib_probe_code()), config, caps, probe_uid=uid,
                        soft_features=want)
    if uid is not None:
      uid_pool(config.uid_base).release(uid)
    if got is None or "rlx-probe-ok" not in res.stdout:
      notes.append(f"{python}: probe failed ({res.status}: {res.stderr[-300:]!r})")
      continue
    return Capabilities(python, got["net"], got["fs"], got["pid"], got["drop"],
                        "; ".join(notes))
  # No interpreter works with a dropped uid (e.g. its stdlib is not readable
  # by other users): fall back to running without the uid drop.
  python = cands[0]
  res, got = _execute(Job(_stdlib_probe_code()), config,
                      Capabilities(python, False, False, False, False),
                      probe_uid=None, soft_features=want)
  got = got or {"net": False, "fs": False, "pid": False, "drop": False}
  notes.append("no interpreter usable with a dropped uid")
  return Capabilities(python, got["net"], got["fs"], got["pid"], False,
                      "; ".join(notes))


def _limits(config: SandboxConfig) -> dict[str, Any]:
  return dict(cpu_time_s=config.cpu_time_s, memory_mb=config.memory_mb,
              max_processes=config.max_processes,
              file_size_mb=config.file_size_mb, tmpfs_mb=config.tmpfs_mb,
              max_open_files=config.max_open_files,
              nproc_fallback=_nproc_fallback(config))


def _nproc_fallback(config: SandboxConfig) -> int:
  """Without a private uid RLIMIT_NPROC counts every process of the user."""
  if os.geteuid() == 0:
    return 1 << 20  # ignored for root anyway
  return len(live_processes(uid=os.getuid())) + 64 + config.max_processes


def _classify(rc: int | None, killed: str | None, stderr: str, stdout: str,
              nonce: str | None) -> str:
  if killed:
    return killed
  if rc is None:
    return "sandbox_error"
  if rc == 0:
    if nonce is not None and not stdout.rstrip().endswith(nonce):
      return "failed"  # assert tests never finished (os._exit(0) etc.)
    return "ok"
  if rc == EXIT_COMPILE_ERROR:
    return "compile_error"
  if rc == EXIT_TEST_FAILED:
    return "failed"
  if rc == EXIT_BAD_TEST:
    return "bad_test"
  if rc == EXIT_SANDBOX and "rlx-sandbox:" in stderr:
    return "sandbox_error"
  if rc in (128 + signal.SIGXCPU, 128 + signal.SIGKILL, -signal.SIGXCPU):
    return "timeout"
  last = stderr.rstrip().rsplit("\n", 1)[-1]
  if last.startswith("MemoryError"):
    return "memory_limit"
  return "runtime_error"


def _execute(job: Job, config: SandboxConfig, caps: Capabilities, *,
             probe_uid: int | None = None,
             soft_features: dict[str, bool] | None = None
             ) -> tuple[ExecResult, dict[str, bool] | None]:
  """Runs one job; returns the result and (probe mode) the features obtained."""
  t0 = time.monotonic()
  soft = soft_features is not None
  uid = None
  pool = None
  jobdir = None
  proc = None
  sweep = True
  try:
    if soft:
      uid = probe_uid
    elif caps.drop_uid:
      pool = uid_pool(config.uid_base)
      uid = pool.acquire()
    nonce = secrets.token_hex(16) if job.test is not None else None
    features = soft_features or dict(net=caps.net, fs=caps.fs, pid=caps.pid)
    jobdir = tempfile.mkdtemp(prefix="rlx_sb_", dir=config.base_dir)
    env = {"PATH": _MINIMAL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    spec = dict(code=job.code, test=job.test, nonce=nonce or "", uid=uid,
                features=features, soft=soft, limits=_limits(config),
                tmp_dirs=list(_PRIVATE_TMP_DIRS), env=env)
    fd = os.open(os.path.join(jobdir, "job.bin"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
      marshal.dump(_LAUNCHER, f)
      marshal.dump(spec, f)
    flags = ["-I", "-B"] if config.site_packages else ["-I", "-S", "-B"]
    proc = subprocess.Popen(
        [caps.python, *flags, "-c", _BOOTSTRAP, jobdir],
        stdin=subprocess.PIPE if job.stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=jobdir, env=env,
        close_fds=True, start_new_session=True)
    stdin_bytes = job.stdin.encode() if job.stdin is not None else None
    out, err, killed = _communicate(proc, stdin_bytes, t0 + config.wall_time_s,
                                    config.max_output_bytes)
    rc = proc.returncode
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    got = None
    if soft:
      for line in stderr.splitlines():
        if line.startswith("RLXSB:"):
          names = set(line[len("RLXSB:"):].split(","))
          got = {k: k in names for k in ("net", "fs", "pid", "drop")}
    status = _classify(rc, killed, stderr, stdout, nonce)
    if nonce is not None and stdout.rstrip().endswith(nonce):
      stdout = stdout.rstrip()[:-len(nonce)].rstrip("\n")
    # With a PID namespace, init's exit (which the launcher waited for) has
    # already killed every process of the run; otherwise sweep.
    pid_ns = bool(got and got["pid"]) if soft else features["pid"]
    sweep = not (pid_ns and killed is None and rc != EXIT_SANDBOX)
    return ExecResult(status, rc, stdout, stderr, time.monotonic() - t0), got
  except Exception as e:  # pylint: disable=broad-except
    log.exception("sandbox failure")
    return ExecResult("sandbox_error", None, "", f"{type(e).__name__}: {e}",
                      time.monotonic() - t0), None
  finally:
    _cleanup(proc, uid, sweep, jobdir)
    if jobdir is not None:
      shutil.rmtree(jobdir, ignore_errors=True)
    if pool is not None and uid is not None:
      pool.release(uid)


def _communicate(proc: subprocess.Popen, stdin_bytes: bytes | None,
                 deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
  """Feeds stdin, reads stdout/stderr up to `cap` each, until EOF or deadline."""
  sel = selectors.DefaultSelector()
  out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
  bufs = {out_fd: bytearray(), err_fd: bytearray()}
  files = {out_fd: proc.stdout, err_fd: proc.stderr}
  for fd in bufs:
    os.set_blocking(fd, False)
    sel.register(fd, selectors.EVENT_READ)
  view, pos = None, 0
  if stdin_bytes is not None:
    sin = proc.stdin.fileno()
    if stdin_bytes:
      os.set_blocking(sin, False)
      sel.register(sin, selectors.EVENT_WRITE)
      view = memoryview(stdin_bytes)
    else:
      proc.stdin.close()
  killed = None
  exited_at = None
  try:
    while sel.get_map():
      now = time.monotonic()
      if now >= deadline:
        killed = "timeout"
        break
      if exited_at is None and proc.poll() is not None:
        exited_at = now
      if exited_at is not None and now - exited_at > 0.2:
        break  # launcher gone; stray writers (fallback mode) get killed below
      for key, _ in sel.select(min(deadline - now, 0.05)):
        fd = key.fd
        if fd not in bufs:  # stdin
          try:
            pos += os.write(fd, view[pos:pos + 65536])
          except BlockingIOError:
            continue
          except OSError:  # BrokenPipe: the program stopped reading
            pos = len(view)
          if pos >= len(view):
            sel.unregister(fd)
            proc.stdin.close()
          continue
        try:
          data = os.read(fd, 65536)
        except BlockingIOError:
          continue
        except OSError:
          data = b""
        if not data:
          sel.unregister(fd)
          continue
        buf = bufs[fd]
        if len(buf) + len(data) > cap:
          buf += data[:cap - len(buf)]
          killed = "output_limit"
          break
        buf += data
      if killed:
        break
  finally:
    sel.close()
    for f in files.values():
      f.close()
    if proc.stdin is not None and not proc.stdin.closed:
      try:
        proc.stdin.close()
      except OSError:
        pass
  if killed:
    _killpg(proc)
  try:
    proc.wait(timeout=max(0.5, deadline - time.monotonic() + 0.5))
  except subprocess.TimeoutExpired:
    _killpg(proc)
    proc.wait()
    killed = killed or "timeout"
  return bytes(bufs[out_fd]), bytes(bufs[err_fd]), killed


def _killpg(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except OSError:
    pass


def _cleanup(proc: subprocess.Popen | None, uid: int | None, sweep: bool,
             jobdir: str | None) -> None:
  if proc is None:
    return
  if proc.returncode is None:
    _killpg(proc)
    try:
      proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass
  if not sweep:
    return
  _killpg(proc)  # members of the launcher's group that outlived it
  if uid is not None:
    kill_all(uid=uid)
  else:
    # Forked children keep the launcher's command line, which names the job dir.
    kill_all(session=proc.pid, marker=jobdir)


class Sandbox:
  """Runs programs in parallel (a thread pool driving sandboxed processes).

  Example:
    sb = Sandbox(SandboxConfig(wall_time_s=2), max_workers=8)
    res = sb.run("print(input()[::-1])", stdin="abc\n")
    res.status, res.stdout  # ('ok', 'cba\n')
  """

  def __init__(self, config: SandboxConfig = SandboxConfig(),
               max_workers: int | None = None):
    self.config = config
    self.max_workers = max_workers or max(2, 2 * (os.cpu_count() or 1))
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._lock = threading.Lock()

  @property
  def capabilities(self) -> Capabilities:
    return capabilities(self.config)

  def run(self, code: str, *, stdin: str | None = None, test: str | None = None,
          config: SandboxConfig | None = None) -> ExecResult:
    """Runs one program now in the calling thread."""
    return self._run_job(Job(code, stdin, test, config))

  def run_many(self, jobs: Sequence[Job]) -> list[ExecResult]:
    """Runs jobs concurrently (up to `max_workers`); results in job order."""
    if not jobs:
      return []
    with self._lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.max_workers, thread_name_prefix="rlx-sandbox")
    return list(self._pool.map(self._run_job, jobs))

  def _run_job(self, job: Job) -> ExecResult:
    config = job.config or self.config
    try:
      caps = capabilities(config)
    except Exception as e:  # pylint: disable=broad-except
      return ExecResult("sandbox_error", None, "", f"probe failed: {e}", 0.0)
    return _execute(job, config, caps)[0]

  def close(self) -> None:
    with self._lock:
      if self._pool is not None:
        self._pool.shutdown(wait=True)
        self._pool = None

  def __enter__(self) -> "Sandbox":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


@functools.lru_cache(maxsize=None)
def default_sandbox() -> Sandbox:
  """A process-wide sandbox with the default config."""
  return Sandbox()
