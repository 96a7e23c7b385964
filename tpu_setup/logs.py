#!/usr/bin/env python3
"""Follow (or print) a run's log on one worker, or stop the run on all workers.

  python tpu_setup/logs.py --name=rlx-v6e --zone=us-east5-b --run-name=gdpo [--worker=0]
  python tpu_setup/logs.py --name=rlx-v6e --zone=us-east5-b --run-name=gdpo --stop
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def commands(args) -> list[list[str]]:
  logs = _common.REMOTE_LOGS
  nodes = _common.node_names(args)
  if args.stop:
    pid = f"{logs}/{args.run_name}.pid"
    cmd = f"if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null || true; rm -f {pid}; fi"
    return [_common.ssh(args, node, cmd) for node in nodes]
  follow = "" if args.no_follow else " -F"
  cmd = f"tail -n {args.lines}{follow} {logs}/{args.run_name}.log"
  return [_common.ssh(args, nodes[args.slice], cmd, worker=args.worker)]


def main(argv: list[str] | None = None) -> int:
  p = _common.base_parser(__doc__.splitlines()[0])
  p.add_argument("--run-name", required=True, help="the run's name given to launch.py")
  p.add_argument("--worker", default="0", help="worker whose log to show (process 0 logs metrics)")
  p.add_argument("--slice", type=int, default=0, help="slice whose worker to use (multislice)")
  p.add_argument("--lines", type=int, default=100, help="lines of history to print")
  p.add_argument("--no-follow", action="store_true", help="print and exit instead of following")
  p.add_argument("--stop", action="store_true", help="kill the run on every worker instead")
  args = p.parse_args(argv)
  _common.check_common(p, args)
  if not 0 <= args.slice < args.slices:
    p.error(f"--slice {args.slice} is outside [0, {args.slices}).")
  return _common.run(commands(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
