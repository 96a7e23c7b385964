#!/usr/bin/env python3
"""Launch one rlx run on every worker of the TPU VM(s), with the same flags.

  python tpu_setup/launch.py --name=rlx-v6e --zone=us-east5-b \
      --config=configs/gdpo.py:task=toolcall --workdir=gs://BUCKET/runs/gdpo \
      [--env=KEY=VALUE ...] [--dry-run] -- --config.train.steps=200

Each worker runs, detached (nohup), from ~/rlx:
  RLX_DISTRIBUTED=1 ~/rlx_venv/bin/python -m rlx.main --config=... --workdir=... [flags]
writing ~/rlx_logs/RUN.log and ~/rlx_logs/RUN.pid (RUN = --run-name, default the
config file's name). RLX_DISTRIBUTED=1 makes rlx call jax.distributed.initialize(),
which finds the other workers (and slices) from the TPU metadata. Use a gs://
workdir on multi-host runs so that every host sees the same checkpoints.
"""
from __future__ import annotations

import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def default_run_name(config: str) -> str:
  return os.path.splitext(os.path.basename(config.split(":", 1)[0]))[0] or "rlx"


def remote_command(args, extra: list[str]) -> str:
  run = args.run_name or default_run_name(args.config)
  logs = _common.REMOTE_LOGS
  env = ["RLX_DISTRIBUTED=1"] + [shlex.quote(e) for e in args.env]
  argv = ([f"{_common.REMOTE_VENV}/bin/python", "-m", "rlx.main",
           shlex.quote(f"--config={args.config}"), shlex.quote(f"--workdir={args.workdir}")]
          + [shlex.quote(a) for a in extra])
  return (f"cd {_common.REMOTE_DIR} && mkdir -p {logs} && "
          + " ".join(env) + " nohup " + " ".join(argv)
          + f" > {logs}/{run}.log 2>&1 < /dev/null & echo $! > {logs}/{run}.pid")


def commands(args, extra: list[str]) -> list[list[str]]:
  cmd = remote_command(args, extra)
  return [_common.ssh(args, node, cmd) for node in _common.node_names(args)]


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  p = _common.base_parser(__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="config spec, e.g. configs/gdpo.py:task=toolcall")
  p.add_argument("--workdir", required=True, help="gs://bucket/path (or a path on each worker)")
  p.add_argument("--run-name", default=None, help="log/pid file name (default: config name)")
  p.add_argument("--env", action="append", default=[],
                 help="KEY=VALUE set for the run on every worker (repeatable)")
  args = p.parse_args(argv)
  _common.check_common(p, args)
  bad = [e for e in args.env if "=" not in e or not e.split("=", 1)[0].isidentifier()]
  if bad:
    p.error(f"--env takes KEY=VALUE, got {bad}.")
  return _common.run(commands(args, extra), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
