#!/usr/bin/env python3
"""Create a TPU VM (or a queued resource, needed for multislice) for rlx.

  python tpu_setup/create.py --name=rlx-v6e --zone=us-east5-b \
      --accelerator-type=v6e-16 --queued --spot --wait [--dry-run]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

# Runtime (software) versions for JAX per TPU generation
# (https://cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}


def default_version(accelerator_type: str) -> str:
  gen = accelerator_type.split("-")[0]
  if gen not in RUNTIME_VERSIONS:
    raise SystemExit(f"no default --version for accelerator type {accelerator_type!r}; "
                     f"known generations: {', '.join(RUNTIME_VERSIONS)}. Pass --version.")
  return RUNTIME_VERSIONS[gen]


def queued_name(args) -> str:
  return args.queued_name or f"{args.name}-qr"


def commands(args) -> list[list[str]]:
  version = args.version or default_version(args.accelerator_type)
  loc = _common.location_flags(args)
  if not args.queued:
    cmd = (["gcloud", "compute", "tpus", "tpu-vm", "create", args.name] + loc
           + [f"--accelerator-type={args.accelerator_type}", f"--version={version}"])
    if args.spot:
      cmd.append("--spot")
    if args.preemptible:
      cmd.append("--preemptible")
    if args.reserved:
      cmd.append("--reserved")
    return [cmd]
  qr = queued_name(args)
  cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", qr]
  if args.slices == 1:
    cmd.append(f"--node-id={args.name}")
  else:
    cmd += [f"--node-count={args.slices}", f"--node-prefix={args.name}"]
  cmd += loc + [f"--accelerator-type={args.accelerator_type}", f"--runtime-version={version}"]
  if args.spot:
    cmd.append("--spot")
  if args.reserved:
    cmd.append("--reserved")
  cmds = [cmd]
  if args.wait:
    describe = " ".join(["gcloud", "compute", "tpus", "queued-resources", "describe", qr]
                        + loc + ['--format="value(state.state)"'])
    script = (f'while true; do s=$({describe}); echo "queued resource {qr}: $s"; '
              'case "$s" in ACTIVE) exit 0;; FAILED|SUSPENDED|SUSPENDING) exit 1;; esac; '
              f"sleep {args.poll_s}; done")
    cmds.append(["bash", "-c", script])
  return cmds


def main(argv: list[str] | None = None) -> int:
  p = _common.base_parser(__doc__.splitlines()[0])
  p.add_argument("--accelerator-type", required=True,
                 help="e.g. v5litepod-8, v6e-16, v5p-32, v4-8")
  p.add_argument("--version", default=None,
                 help="TPU runtime version (default: by generation, see RUNTIME_VERSIONS)")
  p.add_argument("--queued", action="store_true",
                 help="request through a queued resource (required for --slices > 1)")
  p.add_argument("--queued-name", default=None, help="queued resource id (default NAME-qr)")
  p.add_argument("--spot", action="store_true", help="Spot TPUs (preemptible, cheaper)")
  p.add_argument("--preemptible", action="store_true", help="preemptible TPU VM (legacy)")
  p.add_argument("--reserved", action="store_true", help="use reserved capacity")
  p.add_argument("--wait", action="store_true",
                 help="with --queued: wait until the queued resource is ACTIVE")
  p.add_argument("--poll-s", type=int, default=30, help="seconds between --wait polls")
  args = p.parse_args(argv)
  _common.check_common(p, args)
  if args.slices > 1 and not args.queued:
    p.error("--slices > 1 (multislice) needs --queued.")
  if args.preemptible and args.queued:
    p.error("--preemptible is for direct creation; use --spot with --queued.")
  return _common.run(commands(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
