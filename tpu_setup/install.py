#!/usr/bin/env python3
"""Install rlx on every worker of the TPU VM(s): source, Python 3.11 venv, pip install.

Source from git (--repo URL --ref BRANCH_OR_COMMIT) or, by default, a tarball of
a local checkout (--source DIR, uncommitted edits included) copied with scp.

  python tpu_setup/install.py --name=rlx-v6e --zone=us-east5-b [--repo=URL] [--dry-run]

Each worker gets ~/rlx (the code) and ~/rlx_venv (Python 3.11 made by uv) with
`pip install -e ".[tpu]" -c constraints.txt`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = "rlx-src.tar.gz"
DEFAULT_EXCLUDES = ("./.git", "./.venv", "./.hypothesis", "__pycache__", "*.egg-info", ".pytest_cache")


def local_tarball(args) -> str:
  return f"/tmp/rlx-src-{args.name}.tar.gz"


def remote_script(args) -> str:
  d, venv = _common.REMOTE_DIR, _common.REMOTE_VENV
  uv = "~/.local/bin/uv"
  steps = ["python3 -m pip install --user -q -U uv"]
  if args.repo:
    steps.append(f"rm -rf {d} && git clone -q {args.repo} {d} && git -C {d} checkout -q {args.ref}")
  else:
    steps.append(f"rm -rf {d} && mkdir -p {d} && tar -xzf ~/{TARBALL} -C {d}")
  steps.append(f"cd {d}")
  steps.append(f"([ -x {venv}/bin/python ] || {uv} venv -q --python {args.python_version} {venv})")
  pip = f'{uv} pip install -q --python {venv}/bin/python -e ".[{args.extras}]"'
  if args.constraints:
    pip += f" -c {args.constraints}"
  steps.append(pip)
  steps.append(f'{venv}/bin/python -c "import jax, rlx; print(rlx.__name__, jax.__version__)"')
  return " && ".join(steps)


def commands(args) -> list[list[str]]:
  cmds = []
  if not args.repo:
    excludes = [f"--exclude={e}" for e in list(DEFAULT_EXCLUDES) + list(args.exclude)]
    cmds.append(["tar", "-C", args.source] + excludes + ["-czf", local_tarball(args), "."])
  script = remote_script(args)
  for node in _common.node_names(args):
    if not args.repo:
      cmds.append(_common.scp(args, node, local_tarball(args), TARBALL))
    cmds.append(_common.ssh(args, node, script))
  return cmds


def main(argv: list[str] | None = None) -> int:
  p = _common.base_parser(__doc__.splitlines()[0])
  p.add_argument("--repo", default=None,
                 help="git URL to clone on every worker (default: copy --source instead)")
  p.add_argument("--ref", default="main", help="branch, tag or commit to check out with --repo")
  p.add_argument("--source", default=REPO_ROOT, help="local checkout to copy when no --repo")
  p.add_argument("--exclude", action="append", default=[],
                 help="extra tar --exclude pattern for --source (repeatable), e.g. ./runs")
  p.add_argument("--extras", default="tpu", help="pip extras to install")
  p.add_argument("--constraints", default="constraints.txt",
                 help="pip constraints file inside the repo ('' for none)")
  p.add_argument("--python-version", default="3.11", help="Python for the venv (uv fetches it)")
  args = p.parse_args(argv)
  _common.check_common(p, args)
  return _common.run(commands(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
