#!/usr/bin/env python3
"""Delete the TPU VM(s) (or the queued resource and its nodes) made by create.py.

  python tpu_setup/delete.py --name=rlx-v6e --zone=us-east5-b [--queued] [--dry-run]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def commands(args) -> list[list[str]]:
  loc = _common.location_flags(args)
  if args.queued:
    qr = args.queued_name or f"{args.name}-qr"
    # --force also deletes the TPU VMs the queued resource created.
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", qr] + loc
            + ["--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", node] + loc + ["--quiet"]
          for node in _common.node_names(args)]


def main(argv: list[str] | None = None) -> int:
  p = _common.base_parser(__doc__.splitlines()[0])
  p.add_argument("--queued", action="store_true",
                 help="delete the queued resource (and its TPU VMs)")
  p.add_argument("--queued-name", default=None, help="queued resource id (default NAME-qr)")
  args = p.parse_args(argv)
  _common.check_common(p, args)
  return _common.run(commands(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
