"""Sandboxed code execution and code rewards.

The hostile programs run together in one pool, next to a good program, in a
module-scoped fixture; each test then checks one of them.
"""
import os
import secrets
import socket
import time

import psutil
import pytest

from rlx.rewards import REWARD_FNS
from rlx.rewards import code as code_lib
from rlx.rewards import sandbox as sb_lib

WALL = 2.0
HOSTILE_CFG = dict(cpu_time_s=1, wall_time_s=WALL, memory_mb=256, max_processes=8,
                   max_output_bytes=1 << 16)
SECRET = "sk-rlx-fake-" + secrets.token_hex(8)
TOKEN = secrets.token_hex(6)


def _caps():
  return sb_lib.capabilities(sb_lib.SandboxConfig(**HOSTILE_CFG))


def _hostile_programs(port, outside_dir, caps):
  host = os.getpid()
  progs = {
      "infinite_loop": "while True:\n  pass\n",
      "memory_bomb": "a = []\nwhile True:\n  a.append(bytearray(10**7))\n",
      "huge_output": "while True:\n  print('x' * 1000)\n",
      "sleep": "import time\ntime.sleep(100)\n",
      "syntax_error": "def f(:\n  return 1\n",
      "write_outside": (
          "import os\n"
          f"targets = [{str(outside_dir / 'evil.txt')!r}, '/etc/rlx_sb_{TOKEN}',\n"
          f"           '../rlx_sb_escape_{TOKEN}', '/tmp/rlx_sb_tmp_{TOKEN}']\n"
          "for t in targets:\n"
          "  try:\n"
          "    with open(t, 'w') as f:\n"
          "      f.write('x')\n"
          "    print('wrote', t)\n"
          "  except OSError as e:\n"
          "    print('denied', t, e.errno)\n"),
      "read_secrets": (
          "import os, glob\n"
          "print(dict(os.environ))\n"
          f"paths = glob.glob('/proc/*/environ') + ['/proc/{host}/environ']\n"
          "for p in paths:\n"
          "  try:\n"
          "    print(open(p, 'rb').read())\n"
          "  except OSError as e:\n"
          "    print('denied', p)\n"),
      "network": (
          "import socket\n"
          f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
          "s.sendall(b'hello')\n"
          "print('connected')\n"),
      "kill_parent": "import os\nos.kill(os.getppid(), 9)\nprint('still here')\n",
      "good": "a, b = map(int, input().split())\nprint(a * b)\n",
  }
  # Unbounded without a private uid as root (RLIMIT_NPROC does not apply to root).
  if caps.drop_uid or os.geteuid() != 0:
    progs["fork_bomb"] = ("import os\nwhile True:\n  try:\n    os.fork()\n"
                          "  except OSError:\n    pass\n")
  if caps.drop_uid:  # without a private uid these would hit the test process
    progs["kill_host"] = f"import os\nos.kill({host}, 9)\n"
    progs["kill_all"] = "import os\nos.kill(-1, 9)\n"
  return progs


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  base = tmp_path_factory.mktemp("jobs")
  outside = tmp_path_factory.mktemp("outside")
  os.chmod(outside, 0o777)  # only the mount namespace protects this one
  old = os.environ.get("RLX_FAKE_SECRET")
  os.environ["RLX_FAKE_SECRET"] = SECRET
  srv = socket.socket()
  srv.bind(("127.0.0.1", 0))
  srv.listen(8)
  srv.setblocking(False)
  cfg = sb_lib.SandboxConfig(base_dir=str(base), **HOSTILE_CFG)
  caps = sb_lib.capabilities(cfg)
  progs = _hostile_programs(srv.getsockname()[1], outside, caps)
  good_cfg = sb_lib.SandboxConfig(base_dir=str(base), wall_time_s=30)
  jobs = [sb_lib.Job(c, stdin="6 7\n", config=good_cfg) if k == "good" else sb_lib.Job(c)
          for k, c in progs.items()]
  sandbox = sb_lib.Sandbox(cfg, max_workers=len(jobs))
  t0 = time.monotonic()
  try:
    results = dict(zip(progs, sandbox.run_many(jobs)))
  finally:
    sandbox.close()
    if old is None:
      del os.environ["RLX_FAKE_SECRET"]
    else:
      os.environ["RLX_FAKE_SECRET"] = old
  elapsed = time.monotonic() - t0
  try:
    conn, _ = srv.accept()
    accepted = True
    conn.close()
  except BlockingIOError:
    accepted = False
  srv.close()
  yield dict(results=results, caps=caps, base=base, outside=outside, cfg=cfg,
             elapsed=elapsed, accepted=accepted)
  for p in (f"/etc/rlx_sb_{TOKEN}", f"/tmp/rlx_sb_tmp_{TOKEN}"):
    if os.path.exists(p):
      os.unlink(p)


def test_capabilities_as_root_on_linux():
  caps = _caps()
  if os.geteuid() != 0:
    assert not caps.drop_uid
    pytest.skip("namespaces and uid drop need root")
  assert caps.net and caps.fs and caps.pid and caps.drop_uid, caps


def test_batch_finishes_and_good_program_passes(hostile):
  r = hostile["results"]["good"]
  assert (r.status, r.stdout) == ("ok", "42\n")
  # Everything ran concurrently: the batch takes about one wall limit.
  assert hostile["elapsed"] < WALL + 10


@pytest.mark.parametrize("name,statuses", [
    ("infinite_loop", {"timeout"}),
    ("sleep", {"timeout"}),
    ("memory_bomb", {"memory_limit"}),
    ("huge_output", {"output_limit"}),
    ("syntax_error", {"compile_error"}),
    ("fork_bomb", {"timeout", "runtime_error"}),
])
def test_hostile_program_is_stopped(hostile, name, statuses):
  if name not in hostile["results"]:
    pytest.skip(f"{name} needs the uid drop on this machine")
  r = hostile["results"][name]
  assert r.status in statuses, r
  assert r.bug
  assert r.wall_s < WALL + 1.5
  if name == "huge_output":
    assert len(r.stdout) <= HOSTILE_CFG["max_output_bytes"]


def test_no_leftover_processes_or_files(hostile):
  base = hostile["base"]
  assert os.listdir(base) == []  # job dirs removed
  # Every process of these runs (launcher, init, program and its forks) has
  # this fixture's job dir in its command line.
  for p in psutil.process_iter(["cmdline", "status"]):
    if p.info["status"] == psutil.STATUS_ZOMBIE:
      continue
    assert str(base) not in " ".join(p.info["cmdline"] or []), p


def test_write_outside_temp_dir(hostile):
  caps = hostile["caps"]
  r = hostile["results"]["write_outside"]
  assert r.status == "ok", r
  if caps.drop_uid:
    assert not os.path.exists(f"/etc/rlx_sb_{TOKEN}")
    assert f"denied /etc/rlx_sb_{TOKEN}" in r.stdout
  if caps.fs:
    # Writes to world-writable places land in the run's private tmpfs.
    assert not os.path.exists(hostile["outside"] / "evil.txt")
    assert not os.path.exists(f"/tmp/rlx_sb_tmp_{TOKEN}")
  assert not any(f"rlx_sb_escape_{TOKEN}" in n for n in os.listdir(hostile["base"]))


def test_environment_secrets_not_visible(hostile):
  r = hostile["results"]["read_secrets"]
  assert r.status == "ok", r
  assert "PATH" in r.stdout  # it did print its environment
  assert SECRET not in r.stdout and SECRET not in r.stderr
  assert "RLX_FAKE_SECRET" not in r.stdout


def test_network_blocked(hostile):
  if not hostile["caps"].net:
    pytest.skip("no network namespace on this machine")
  r = hostile["results"]["network"]
  assert r.status == "runtime_error" and "connected" not in r.stdout, r
  assert not hostile["accepted"]


def test_kill_parent_and_host(hostile):
  res = hostile["results"]
  r = res["kill_parent"]
  assert r.status in ("runtime_error", "ok"), r
  for name in ("kill_host", "kill_all"):
    if name in res:
      assert res[name].status == "runtime_error", res[name]
  assert psutil.pid_exists(os.getpid())
  assert res["good"].status == "ok"


def test_statuses_and_assert_mode():
  sb = sb_lib.Sandbox(sb_lib.SandboxConfig(wall_time_s=10), max_workers=8)
  jobs = [
      sb_lib.Job("print(input()[::-1])", stdin="abc\n"),
      sb_lib.Job("def f(x):\n  return x + 1\n", test="assert f(1) == 2"),
      sb_lib.Job("def f(x):\n  return x\n", test="assert f(1) == 2"),
      sb_lib.Job("import sys\ndef f(x):\n  return x\nsys.exit(0)\n", test="assert f(1) == 2"),
      sb_lib.Job("import os\nos._exit(0)\n", test="assert False"),
      sb_lib.Job("def f(x):\n  return x\n", test="assert f(1) ==="),
      sb_lib.Job("import sys\nsys.exit(3)\n"),
      sb_lib.Job("raise ValueError('boom')\n"),
      sb_lib.Job("print(undefined_name)\n", stdin=""),
  ]
  got = [(r.status, r.returncode) for r in sb.run_many(jobs)]
  sb.close()
  assert got == [("ok", 0), ("ok", 0), ("failed", 82), ("failed", 82), ("failed", 0),
                 ("bad_test", 83), ("runtime_error", 3), ("runtime_error", 1),
                 ("runtime_error", 1)]


def test_extract_code_and_normalize_tests():
  assert code_lib.extract_code("x\n```python\na=1\n```\ny\n```py\nb=2\n```") == "b=2\n"
  assert code_lib.extract_code("```\nc=3\n```") == "c=3\n"
  assert code_lib.extract_code("```cpp\nint x;\n```") == "int x;\n"
  assert code_lib.extract_code("print(1)") == "print(1)"
  n = code_lib.normalize_tests
  stdio = code_lib.TestCase("stdio", stdin="1\n", expected="2\n")
  assert n([{"input": "1\n", "output": "2\n"}]) == [stdio]
  assert n({"inputs": ["1\n"], "outputs": ["2\n"]}) == [stdio]
  assert n('{"test_cases": [["1\\n", "2\\n"]]}') == [stdio]
  assert n(["assert f(1) == 2"]) == [code_lib.TestCase("assert", code="assert f(1) == 2")]
  assert n("def check(c):\n  assert c(1) == 2", "f")[0].code.endswith("check(f)\n")
  with pytest.raises(ValueError, match="inputs but"):
    n({"inputs": ["1"], "outputs": []})
  assert code_lib.outputs_match("3 \n4\n\n", "3\n4")
  assert not code_lib.outputs_match("3\n5", "3\n4")


class CountingSandbox(sb_lib.Sandbox):
  runs = 0

  def run_many(self, jobs):
    CountingSandbox.runs += len(jobs)
    return super().run_many(jobs)


def test_code_rewards_pass_rate_bug_and_cache():
  sb = CountingSandbox(sb_lib.SandboxConfig(wall_time_s=10, cpu_time_s=1), max_workers=8)
  salt = secrets.token_hex(4)  # fresh programs: nothing cached from other tests
  comps = [
      f"```python\n# {salt}\na, b = map(int, input().split())\nprint(a + b)\n```",
      f"```python\n# {salt}\nprint(3)\n```",
      f"Here:\n```python\n# {salt}\ndef add(a, b):\n  return a + b\n```",
      [{"role": "assistant", "content": f"def add(a, b):  # {salt}\n  return a - b\n"}],
      f"```python\n# {salt}\ndef add(a, b:\n```",
      f"```python\n# {salt}\ndef add(a, b):\n  while True: pass\n```",
      f"```python\n# {salt}\ndef solve(c):\n  return c\n```",
  ]
  tests = [
      [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4"}],
      {"inputs": ["1 2\n", "2 2\n"], "outputs": ["3", "4"]},
      ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
      ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
      ["assert add(1, 2) == 3"],
      ["assert add(1, 2) == 3", "assert True"],
      "def check(candidate):\n  assert candidate(5) == 5\n",
  ]
  entry = [None] * 6 + ["solve"]
  pr = REWARD_FNS.get("code_pass_rate")(["p"] * 7, comps, test_cases=tests, entry_point=entry,
                                        sandbox=sb)
  n_runs = CountingSandbox.runs
  assert pr == [1.0, 0.5, 1.0, 0.5, 0.0, 0.5, 1.0]
  assert n_runs == 12
  bug = REWARD_FNS.get("code_bug")(["p"] * 7, comps, test_cases=tests, entry_point=entry,
                                   sandbox=sb)
  assert bug == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
  assert CountingSandbox.runs == n_runs  # served from the cache
  no_bug = REWARD_FNS.get("code_no_bug")(["p"] * 7, comps, test_cases=tests,
                                         entry_point=entry, sandbox=sb)
  assert no_bug == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
  # No tests: missing reward, not a penalty.
  none = REWARD_FNS.get("code_pass_rate")(["p"], ["print(1)"], test_cases=[[]], sandbox=sb)
  assert none == [None]
  sb.close()
