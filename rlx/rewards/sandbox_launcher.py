"""The sandbox's child-side launcher (source text run in the child; see sandbox.py).

`BOOTSTRAP` is passed with `python -I -S -B -c`; it reads JOBDIR/job.bin, whose
first marshal record is `LAUNCHER` and whose second is the job. Kept as text so
the child imports nothing from rlx.
"""
# --------------------------------------------------------------------------
# Launcher: `python -I -S -B -c BOOTSTRAP JOBDIR` in a new session; JOBDIR/
# job.bin holds two marshal records: the LAUNCHER source, then the job.
# --------------------------------------------------------------------------
BOOTSTRAP = ("import sys, marshal; _JOBFILE = open(sys.argv[1] + '/job.bin', 'rb'); "
             "exec(marshal.load(_JOBFILE))")

LAUNCHER = r'''
import os, sys, marshal, resource

def _print_exc():
  try:
    sys.__excepthook__(*sys.exc_info())
  except BaseException:
    pass

def _write(fd, s):
  try:
    os.write(fd, s.encode("utf-8", "replace"))
  except OSError:
    pass

def _fail(msg):
  _write(2, "rlx-sandbox: " + msg + "\n")
  os._exit(85)

def _status_code(st):
  if os.WIFEXITED(st):
    return os.WEXITSTATUS(st)
  if os.WIFSIGNALED(st):
    return 128 + os.WTERMSIG(st)
  return 1

def _supervise(fn):
  """Fork; the child runs fn() (never returns); reap until it exits."""
  pid = os.fork()
  if pid == 0:
    try:
      fn()
    except BaseException:
      _print_exc()
    os._exit(85)
  while True:
    try:
      p, st = os.wait()
    except ChildProcessError:
      return 85
    except InterruptedError:
      continue
    if p == pid:
      return _status_code(st)

def _flush():
  for s in (sys.stdout, sys.stderr):
    try:
      s.flush()
    except BaseException:
      pass

def _exit_code(e):
  c = e.code
  if c is None:
    return 0
  if isinstance(c, int):
    return c & 0xFF
  _write(2, str(c) + "\n")
  return 1

def _compile_or_exit(source, filename, exit_code):
  try:
    return compile(source, filename, "exec")
  except BaseException:
    _print_exc()
    _flush()
    os._exit(exit_code)

def _harness(job, nonce):
  sys.argv = ["solution.py"]
  code = _compile_or_exit(job["code"], "solution.py", 81)
  test = None
  if job["test"] is not None:
    test = _compile_or_exit(job["test"], "test.py", 83)
  main_mod = type(sys)("__main__")  # a fresh __main__ module for the program
  sys.modules["__main__"] = main_mod
  g = main_mod.__dict__
  g["__builtins__"] = __builtins__
  try:
    exec(code, g)
  except SystemExit as e:
    c = _exit_code(e)
    if c != 0:
      _flush()
      os._exit(c)
  except BaseException:
    _print_exc()
    _flush()
    os._exit(1)
  if test is not None:
    try:
      exec(test, g)
    except SystemExit as e:
      if _exit_code(e) != 0:
        _flush()
        os._exit(82)
    except AssertionError:
      _print_exc()
      _flush()
      os._exit(82)
    except BaseException:
      _print_exc()
      _flush()
      os._exit(1)
  _flush()
  if test is not None:
    _write(1, "\n" + nonce + "\n")
  os._exit(0)

def main():
  jobdir = sys.argv[1]
  job = marshal.load(_JOBFILE)  # the record after this source (see BOOTSTRAP)
  _JOBFILE.close()
  os.unlink(os.path.join(jobdir, "job.bin"))
  nonce = job.pop("nonce")
  want, soft, lim = job["features"], job["soft"], job["limits"]
  got = {"net": False, "fs": False, "pid": False, "drop": False}
  libc = None
  if want["net"] or want["fs"] or want["pid"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]
  if want["net"]:
    got["net"] = libc.unshare(0x40000000) == 0  # CLONE_NEWNET
    if not got["net"] and not soft:
      _fail("unshare(CLONE_NEWNET) failed")
  if want["fs"]:
    ok = libc.unshare(0x00020000) == 0  # CLONE_NEWNS
    # MS_REC | MS_PRIVATE: our mounts never propagate back to the host.
    ok = ok and libc.mount(b"none", b"/", None, 16384 | (1 << 18), None) == 0
    if ok:
      opts = ("size=%dm,mode=1777" % lim["tmpfs_mb"]).encode()
      for d in job["tmp_dirs"]:
        if os.path.isdir(d) and not os.path.islink(d):
          # MS_NOSUID | MS_NODEV
          ok = ok and libc.mount(b"tmpfs", d.encode(), b"tmpfs", 2 | 4, opts) == 0
    got["fs"] = ok
    if not ok and not soft:
      _fail("mount namespace / private tmpfs failed")
  if want["pid"] and got["fs"]:
    got["pid"] = libc.unshare(0x20000000 | 0x08000000) == 0  # NEWPID | NEWIPC
    if not got["pid"] and not soft:
      _fail("unshare(CLONE_NEWPID) failed")
  uid = job["uid"]
  workdir = "/tmp/rlx_work" if got["fs"] else os.path.join(jobdir, "work")
  os.mkdir(workdir, 0o700)
  if uid is not None:
    try:
      os.chown(workdir, uid, uid)
    except OSError:
      if not soft:
        _fail("chown of the work dir failed")

  def run_program():
    os.chdir(workdir)
    R = resource
    cpu = max(1, int(-(-lim["cpu_time_s"] // 1)))
    limits = [(R.RLIMIT_CPU, (cpu, cpu + 1)),
              (R.RLIMIT_AS, (lim["memory_mb"] << 20,) * 2),
              (R.RLIMIT_FSIZE, (lim["file_size_mb"] << 20,) * 2),
              (R.RLIMIT_NOFILE, (lim["max_open_files"],) * 2),
              (R.RLIMIT_CORE, (0, 0))]
    if uid is not None:
      limits.append((R.RLIMIT_NPROC, (lim["max_processes"],) * 2))
    else:
      limits.append((R.RLIMIT_NPROC, (lim["nproc_fallback"],) * 2))
    for which, val in limits:
      try:
        R.setrlimit(which, val)
      except (ValueError, OSError):
        if which != R.RLIMIT_NPROC and not soft:
          _fail("setrlimit failed")
    if uid is not None:
      try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        got["drop"] = True
      except OSError:
        if not soft:
          _fail("setuid to %d failed" % uid)
    os.umask(0o077)
    os.environ.clear()
    os.environ.update(job["env"])
    os.environ["HOME"] = workdir
    os.environ["TMPDIR"] = workdir
    if soft:
      _write(2, "RLXSB:" + ",".join(k for k in sorted(got) if got[k]) + "\n")
    _harness(job, nonce)

  if got["pid"]:
    def init():
      # pid 1 of the new namespace: private /proc, reap, exit with the
      # program's status (the kernel then kills whatever is left).
      libc.mount(b"proc", b"/proc", b"proc", 2 | 4 | 8, None)
      os._exit(_supervise(run_program))
    code = _supervise(init)
  else:
    code = _supervise(run_program)
  os._exit(code)

main()
'''
