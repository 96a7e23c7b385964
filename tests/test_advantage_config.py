"""Reward transforms and estimator inputs from the config, through the RL loop."""
import json
import os

import numpy as np
import pytest

from rlx.data import TASKS
from rlx.train.config import check_names, check_traced, load_config

ROOT = os.path.dirname(os.path.abspath(__file__))


def _config(tmp_path, **updates):
  rows = TASKS.get("arith")().make_examples(seed=0, n=16)
  data = tmp_path / "arith.jsonl"
  data.write_text("".join(json.dumps(dict({k: r[k] for k in ("prompt", "answer", "max_len")},
                                          task=i % 2)) + "\n" for i, r in enumerate(rows)))
  cfg = load_config(os.path.join(ROOT, "configs", "tiny_rl.py"), f"data={data},steps=2")
  cfg.rewards = {"correct": {"fn": "arith/correct", "weight": 1.0},
                 "length": {"fn": "arith/length", "weight": 0.5}}
  cfg.train.eval_every = 0
  cfg.train.export_hf = False
  cfg.update_from_flattened_dict(updates)
  return cfg


def test_transforms_and_task_column_run_in_the_loop(tmp_path):
  from rlx.train.metrics import read_jsonl
  from rlx.train.rl import train_rl
  cfg = _config(tmp_path, **{
      "advantage.estimator": "tmn_reweight",
      "advantage.options": {"num_tasks": 2},
      "advantage.columns": {"task_ids_N": "task"},
      "advantage.transforms": [
          {"name": "conditioned", "target": "length", "condition": "correct"},
          {"name": "overlong_penalty", "max_length": 12, "cache_length": 4}]})
  check_names(cfg)
  check_traced(cfg)
  train_rl(cfg, str(tmp_path / "run"))
  rows = [r for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl")) if "loss" in r]
  assert len(rows) == 2
  assert all(np.isfinite(r["loss"]) and "estimator/mean_pass_rate" in r for r in rows)


@pytest.mark.parametrize("updates, needle", [
    ({"advantage.estimator": "agent_grouping", "advantage.options": {"num_agents": 2}},
     "config.advantage.columns.agent_ids_N"),
    ({"advantage.transforms": [{"name": "log_sigmoid"}]},
     "config.advantage.columns.reference_levels_GK"),
    ({"advantage.transforms": [{"name": "calibrate"}]},
     "config.advantage.inputs.reference_rewards_GMK"),
    ({"advantage.estimator": "pref_grpo"},
     "pref_grpo needs AdvantageInputs.pairwise_NM, which is None: set "
     "config.advantage.inputs.pairwise_NM"),
    ({"advantage.estimator": "f_grpo"},
     "f_grpo needs AdvantageInputs.phase_mask_NZT, which is None: set "
     "config.advantage.inputs.phase_mask_NZT to a producer (phase_split)"),
    ({"advantage.estimator": "mapo"}, "mapo needs AdvantageInputs.turn_scores_NU"),
    ({"advantage.estimator": "mapo", "advantage.inputs": {"turn_scores_NU": {
        "name": "turn_scores", "delimiter": "\n", "max_turns": 3, "reward": "arith/correct"}}},
     "config.advantage.inputs.turn_ids_NT"),
    ({"advantage.estimator": "agent_grouping", "advantage.options": {"num_agents": 2}},
     "config.advantage.inputs.agent_ids_N to a producer (agent_parser)"),
])
def test_an_input_the_config_does_not_provide_fails_at_start_up(tmp_path, updates, needle):
  cfg = _config(tmp_path, **updates)
  check_names(cfg)
  with pytest.raises((KeyError, ValueError)) as e:
    check_traced(cfg)
  assert needle in str(e.value)


def test_reference_samples_need_a_reference_policy(tmp_path):
  cfg = _config(tmp_path, **{
      "ref.source": "none", "loss.terms": {"pg": {}},
      "advantage.inputs": {"reference_rewards_GMK": {"name": "reference_samples", "samples": 2}}})
  with pytest.raises(ValueError, match="config.advantage.inputs.reference_rewards_GMK: "
                     "reference_samples samples the reference policy"):
    check_names(cfg)


def test_an_input_has_one_source(tmp_path):
  cfg = _config(tmp_path, **{
      "advantage.columns": {"agent_ids_N": "task"},
      "advantage.inputs": {"agent_ids_N": {"name": "agent_parser", "patterns": ["x"]}}})
  with pytest.raises(ValueError, match="config.advantage.inputs.agent_ids_N: also set in "
                     "config.advantage.columns"):
    check_names(cfg)


def test_columns_provide_the_inputs(tmp_path):
  cfg = _config(tmp_path, **{
      "advantage.estimator": "agent_grouping", "advantage.options": {"num_agents": 2},
      "advantage.columns": {"agent_ids_N": "task", "reference_levels_GK": "levels"},
      "advantage.transforms": [{"name": "log_sigmoid"}]})
  check_traced(cfg)


@pytest.mark.parametrize("spec, needle", [
    ({"name": "conditioned_typo"}, "Valid"), ({"name": "overlong_penalty", "max_len": 3}, "max_len"),
    ("conditioned", "Valid names")])
def test_bad_transform_specs_are_config_errors(tmp_path, spec, needle):
  cfg = _config(tmp_path, **{"advantage.transforms": [spec]})
  with pytest.raises((KeyError, ValueError, TypeError)) as e:
    check_names(cfg)
  assert "config.advantage.transforms[0]" in str(e.value) and needle in str(e.value)
