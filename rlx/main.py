"""rlx entry point.

    python -m rlx.main --config=configs/gdpo.py:task=toolcall --workdir=runs/x \
        [--config.train.steps=10]

Runs the trainer the config names (`config.trainer`: rl, sft, reward_model).
With `config.model.init = "sft"` the RL run first warm-starts the policy by
SFT in `workdir/sft`. Restarting in the same workdir resumes.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes if it has checkpoints).")
_LIBRARY_LOGS = flags.DEFINE_bool(
    "library_logs", False, "Show the INFO logs of libraries (orbax, absl, jax, ...); by "
    "default only their warnings and errors reach the console.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
  """Passes rlx's records (root logger, rlx.*) and libraries' warnings and errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    ours = record.name in ("root", "__main__") or record.name.startswith("rlx")
    return ours or record.levelno >= logging.WARNING


def setup_logging(library_logs: bool = False) -> None:
  """INFO for rlx; libraries' INFO lines (orbax writes dozens per checkpoint)
  only with `library_logs`."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  for handler in root.handlers:
    for f in [f for f in handler.filters if isinstance(f, _QuietLibraries)]:
      handler.removeFilter(f)
    if not library_logs:
      handler.addFilter(_QuietLibraries())


def check(cfg) -> None:
  """Everything checkable before compute: keys, registry names, options, the
  mesh against the devices and the batches against the mesh. Also starts the
  multi-host runtime when the environment asks for it."""
  from rlx.parallel import distributed
  from rlx.train.config import check_names, check_traced, validate

  validate(cfg)
  check_names(cfg)
  distributed.maybe_initialize(cfg)
  if cfg.trainer == "rl":
    from rlx.train.placement import Placement
    place = Placement(cfg)
    place.check_batch(cfg.train.batch_prompts, "config.train.batch_prompts")
    place.check_batch(cfg.eval.batch_prompts, "config.eval.batch_prompts")
    check_traced(cfg)


def save_config(cfg, workdir: str) -> str:
  """Writes WORKDIR/config.json; a different config.json already there (an earlier
  start of this workdir) is kept as config.N.json, N = 1, 2, ... in order."""
  path = os.path.join(workdir, "config.json")
  text = cfg.to_json_best_effort(indent=1)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return path
    n = 1
    while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
      n += 1
    os.replace(path, os.path.join(workdir, f"config.{n}.json"))
  with open(path, "w") as f:
    f.write(text)
  return path


def run(cfg, workdir: str, *, checked: bool = False) -> dict:
  """Runs the config's trainer in `workdir` (`checked`: `check(cfg)` already ran)."""
  if not checked:
    check(cfg)
  os.makedirs(workdir, exist_ok=True)
  import jax
  if jax.process_index() == 0:
    save_config(cfg, workdir)
  if cfg.trainer == "sft":
    from rlx.train.sft import train_sft
    return {"hf": train_sft(cfg, workdir)}
  if cfg.trainer == "reward_model":
    from rlx.train.reward_model import train_reward_model
    return train_reward_model(cfg, workdir)
  from rlx.train.rl import train_rl
  init = None
  if cfg.model.init == "sft":
    from rlx.train.sft import train_sft
    init = train_sft(cfg, os.path.join(workdir, "sft"))
  return train_rl(cfg, workdir, init_checkpoint=init)


def _parse_flags(argv: list[str]) -> list[str]:
  from rlx.train.config import parse_flags
  return parse_flags(argv, "python -m rlx.main --config=configs/FILE.py[:ARGS] --workdir=DIR "
                           "[--config.KEY=VALUE ...]")


def main(argv):
  del argv
  setup_logging(_LIBRARY_LOGS.value)
  cfg = _CONFIG.value
  try:  # configuration errors: a message, no traceback, before any compute
    check(cfg)
  except (KeyError, ValueError, TypeError) as e:
    print(f"rlx: config error: {e.args[0] if e.args else e}", file=sys.stderr)
    sys.exit(2)
  from rlx.train.checkpoint import CheckpointMismatch
  try:
    out = run(cfg, _WORKDIR.value, checked=True)
  except CheckpointMismatch as e:  # nothing was written: the checkpoints are as they were
    print(f"rlx: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)  # skips orbax's background threads, which otherwise fail noisily at exit
  print(json.dumps(out, default=float))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
