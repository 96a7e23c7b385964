"""Shared helpers of the tpu_setup scripts: common flags, gcloud commands, dry runs.

Every script builds its commands as argv lists first; with --dry-run they are
printed one per line (shell-quoted, ready to paste) instead of run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Sequence

REMOTE_DIR = "~/rlx"
REMOTE_VENV = "~/rlx_venv"
REMOTE_LOGS = "~/rlx_logs"


def base_parser(description: str) -> argparse.ArgumentParser:
  """Flags every script shares; defaults come from RLX_TPU_* environment variables."""
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--name", default=os.environ.get("RLX_TPU_NAME"),
                 help="TPU VM name (node id); with --slices N the nodes are NAME-0..NAME-{N-1}. "
                 "Env RLX_TPU_NAME.")
  p.add_argument("--zone", default=os.environ.get("RLX_TPU_ZONE"),
                 help="GCP zone, e.g. us-east5-b. Env RLX_TPU_ZONE.")
  p.add_argument("--project", default=os.environ.get("RLX_GCP_PROJECT"),
                 help="GCP project (default: gcloud's configured one). Env RLX_GCP_PROJECT.")
  p.add_argument("--slices", type=int, default=1,
                 help="number of TPU slices (multislice needs a queued resource).")
  p.add_argument("--dry-run", action="store_true",
                 help="print the commands, one per line, instead of running them.")
  return p


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if not args.name:
    p.error("--name is required (or set RLX_TPU_NAME).")
  if not args.zone:
    p.error("--zone is required (or set RLX_TPU_ZONE).")
  if args.slices < 1:
    p.error(f"--slices must be >= 1, got {args.slices}.")


def location_flags(args: argparse.Namespace) -> list[str]:
  flags = [f"--zone={args.zone}"]
  if args.project:
    flags.append(f"--project={args.project}")
  return flags


def node_names(args: argparse.Namespace) -> list[str]:
  """TPU VM names: NAME, or NAME-0..NAME-{slices-1} for a multislice queued resource."""
  if args.slices == 1:
    return [args.name]
  return [f"{args.name}-{i}" for i in range(args.slices)]


def ssh(args: argparse.Namespace, node: str, command: str, worker: str = "all") -> list[str]:
  """gcloud ssh running `command` (a shell string) on `worker` of `node`."""
  return (["gcloud", "compute", "tpus", "tpu-vm", "ssh", node] + location_flags(args)
          + [f"--worker={worker}", f"--command={command}"])


def scp(args: argparse.Namespace, node: str, local: str, remote: str,
        worker: str = "all") -> list[str]:
  return (["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{node}:{remote}"]
          + location_flags(args) + [f"--worker={worker}"])


def run(cmds: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Prints (dry run) or runs the commands in order, stopping at the first failure."""
  for cmd in cmds:
    if dry_run:
      print(shlex.join(cmd))
      continue
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(list(cmd))
    if rc:
      print(f"command failed with exit code {rc}: {shlex.join(cmd)}", file=sys.stderr)
      return rc
  return 0
