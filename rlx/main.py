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
flags.mark_flags_as_required(["config", "workdir"])


def check(cfg) -> None:
  """Everything checkable before compute: keys, registry names, options, the
  mesh against the devices and the batches against the mesh. Also starts the
  multi-host runtime when the environment asks for it."""
  from rlx.parallel import distributed
  from rlx.train.config import check_names, validate

  validate(cfg)
  check_names(cfg)
  distributed.maybe_initialize(cfg)
  if cfg.trainer == "rl":
    from rlx.train.placement import Placement
    place = Placement(cfg)
    place.check_batch(cfg.train.batch_prompts, "config.train.batch_prompts")
    place.check_batch(cfg.eval.batch_prompts, "config.eval.batch_prompts")


def run(cfg, workdir: str, *, checked: bool = False) -> dict:
  """Runs the config's trainer in `workdir` (`checked`: `check(cfg)` already ran)."""
  if not checked:
    check(cfg)
  os.makedirs(workdir, exist_ok=True)
  import jax
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=1))
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


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  cfg = _CONFIG.value
  try:  # configuration errors: a message, no traceback, before any compute
    check(cfg)
  except (KeyError, ValueError, TypeError) as e:
    print(f"rlx: config error: {e.args[0] if e.args else e}", file=sys.stderr)
    sys.exit(2)
  out = run(cfg, _WORKDIR.value, checked=True)
  print(json.dumps(out, default=float))


if __name__ == "__main__":
  app.run(main)
