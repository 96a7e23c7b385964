"""Throughput of the code sandbox: 1,000 small correct programs.

Each program reads two integers from stdin and prints their sum; all run
through one `Sandbox` pool (namespaces, rlimits, uid drop where available).
Prints one JSON line: programs/s, wall seconds, pass count, capabilities, and
the host's fp32 matmul GFLOP/s measured in the same run (bench/host.py), to
read the rate against another machine (process start-up, not FLOPs, so no
utilization is given).

  python bench/sandbox.py [--n 1000] [--workers N]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from host import matmul_gflops  # noqa: E402
from rlx.rewards import sandbox as sandbox_lib  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=1000)
  ap.add_argument("--workers", type=int, default=None)
  args = ap.parse_args()
  gflops = matmul_gflops()  # before the pool starts, so it does not compete with it
  sb = sandbox_lib.Sandbox(max_workers=args.workers)
  caps = sb.capabilities  # probe outside the timed region
  jobs = [sandbox_lib.Job(f"a, b = map(int, input().split())\nprint(a + b + {i % 7})\n",
                          stdin=f"{i} {2 * i}\n") for i in range(args.n)]
  t0 = time.perf_counter()
  results = sb.run_many(jobs)
  wall = time.perf_counter() - t0
  sb.close()
  passed = sum(r.status == "ok" and r.stdout.strip() == str(3 * i + i % 7)
               for i, r in enumerate(results))
  print(json.dumps({
      "bench": "sandbox", "programs": args.n, "programs_per_s": round(args.n / wall, 1),
      "wall_s": round(wall, 2), "passed": passed, "workers": sb.max_workers,
      "cpus": os.cpu_count(), "isolation": {"net": caps.net, "fs": caps.fs, "pid": caps.pid,
                                            "drop_uid": caps.drop_uid},
      "python": caps.python, "matmul_fp32_gflops": round(gflops, 1)}))


if __name__ == "__main__":
  main()
