"""Every estimator and transform of README's lists, from configs/methods.py, for
two RL steps through `rlx.main.run` on a tiny random model.

All runs of a chunk share one process, so the model's sample, log-prob and
update steps compile once (rlx/train/rl_setup.py `_shared`); only the
advantage step differs between methods.
"""
import os
import re

import numpy as np
import pytest

from rlx.train.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _methods():
  import importlib.util
  spec = importlib.util.spec_from_file_location("rlx_config_methods",
                                                os.path.join(ROOT, "configs", "methods.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.METHODS, mod.TRANSFORM_METHODS


NAMES, TRANSFORMS = _methods()
# Token-level estimators (f_grpo, mapo) compile a second update: keep them in one chunk.
CHUNKS = [[n for i, n in enumerate(NAMES) if i % 2 == 0 and n != "mapo"] + ["mapo"],
          [n for i, n in enumerate(NAMES) if i % 2 == 1 and n != "mapo"]]
# Metrics an estimator or transform adds to the step's row (besides adv/*).
OWN_METRICS = {
    "gdpo": "estimator/batch_std", "bnpo": "estimator/alpha/correct",
    "tmn_reweight": "estimator/mean_pass_rate", "pref_grpo": "estimator/win_rate_mean",
    "gd2po": "estimator/kept_frac",
    "overlong_penalty": "reward/overlong/abs_adv_share",
    "ensemble": "reward/ensemble/abs_adv_share",
}


def _readme_names():
  text = open(os.path.join(ROOT, "README.md")).read()
  est = text.split("- Estimators (`config.advantage.estimator`):", 1)[1].split("Options go", 1)[0]
  est = re.sub(r"\([^)]*\)", "", est)
  tra = text.split("- Transforms (`config.advantage.transforms`):", 1)[1].split("\n-", 1)[0]
  tra = re.sub(r"\([^)]*\)", "", tra.split(".", 1)[0])
  words = lambda s: set(re.findall(r"[a-z][a-z0-9_]*", s))
  return words(est), words(tra)


def test_readme_lists_the_methods_of_the_end_to_end_test():
  estimators, transforms = _readme_names()
  assert estimators == set(NAMES) - set(TRANSFORMS)
  assert transforms == set(TRANSFORMS)
  assert sorted(sum(CHUNKS, [])) == sorted(NAMES)


def _tiny(name):
  cfg = load_config(os.path.join(ROOT, "configs", "methods.py"),
                    f"method={name},steps=2,group_size=2,batch_prompts=2")
  cfg.model.init = "random"
  cfg.model.arch.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
  cfg.data.num_train, cfg.data.num_eval = 16, 2
  cfg.sampling.max_new_tokens = 16
  cfg.train.prompt_buckets = (cfg.data.max_prompt_len,)  # one bucket: one compile per step
  cfg.train.eval_every = 0
  cfg.train.export_hf = False
  cfg.train.progress = False
  cfg.train.ckpt_every = 0
  if "reference_rewards_GMK" in cfg.advantage.inputs:  # as many as the policy: one compile
    cfg.advantage.inputs.reference_rewards_GMK.samples = 2
  return cfg


@pytest.mark.parametrize("chunk", range(len(CHUNKS)))
def test_every_method_runs_two_steps_from_its_config(tmp_path, monkeypatch, chunk):
  from rlx.main import run
  monkeypatch.setattr("rlx.train.rl_outputs.plot_curves", lambda *a, **k: None)  # 1-3 s a run
  from rlx.train.metrics import read_jsonl
  for name in CHUNKS[chunk]:
    run(_tiny(name), str(tmp_path / name))
    rows = read_jsonl(str(tmp_path / name / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2], name
    for row in rows:
      assert np.isfinite(row["loss"]), (name, row["loss"])
      assert np.isfinite(row["adv/abs_mean"]), name
      assert OWN_METRICS.get(name, "adv/std") in row, (name, sorted(row))
