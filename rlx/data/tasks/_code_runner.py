"""Runs candidate programs against tests; started by rlx.data.tasks.code._execute.

stdin: JSON {"programs": [str], "tests": [[[args, expected], ...]], "timeout": s,
"start": i, "mem_bytes": b, "cpu_s": s}. Applies the rlimits, then for each
program from `start` prints one line
'@@RLX@@ {"i": i, "passed": p, "total": t, "error": str | null}' as soon as it
is done, so a caller that kills a hung run keeps the finished results.
Not a security sandbox: standard library only, run with `python -I`.
"""
import io
import json
import signal
import sys

MARK = "@@RLX@@ "


class _Timeout(BaseException):
  pass


def _alarm(signum, frame):
  raise _Timeout()


def run_one(program, tests, timeout):
  passed, error = 0, None
  real_stdout = sys.stdout
  sys.stdout = io.StringIO()
  signal.signal(signal.SIGALRM, _alarm)
  signal.setitimer(signal.ITIMER_REAL, timeout)
  try:
    scope = {"__name__": "__rlx_candidate__"}
    exec(compile(program, "<completion>", "exec"), scope)  # pylint: disable=exec-used
    f = scope.get("f")
    if not callable(f):
      raise NameError("the completion defines no function f")
    for args, expected in tests:
      try:
        passed += bool(f(*args) == expected)
      except _Timeout:
        raise
      except BaseException as e:  # pylint: disable=broad-except
        error = error or type(e).__name__
  except _Timeout:
    error = "TimeoutError"
  except BaseException as e:  # pylint: disable=broad-except
    error = type(e).__name__
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout = real_stdout
  return passed, error


def main():
  req = json.loads(sys.stdin.read())
  import resource  # pylint: disable=g-import-not-at-top
  for limit, value in ((resource.RLIMIT_AS, req.get("mem_bytes")),
                       (resource.RLIMIT_CPU, req.get("cpu_s")),
                       (resource.RLIMIT_FSIZE, 1 << 20)):
    if value:
      try:
        resource.setrlimit(limit, (value, value))
      except (ValueError, OSError):
        pass
  out = sys.stdout
  for i in range(req.get("start", 0), len(req["programs"])):
    tests = req["tests"][i]
    passed, error = run_one(req["programs"][i], tests, req["timeout"])
    out.write(MARK + json.dumps({"i": i, "passed": passed, "total": len(tests),
                                 "error": error}) + "\n")
    out.flush()


if __name__ == "__main__":
  main()
