"""Reward functions written for TRL's GRPOTrainer run unchanged in rlx's scorer."""
import asyncio
import re

import numpy as np

from rlx.train.scoring import Scorer, build_rewards, completion_id_lists


# --- Functions as TRL's documentation writes them (trl docs, grpo_trainer.md) ---


def reward_len(completions, **kwargs):
  return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
  pattern = r"^<think>.*?</think><answer>.*?</answer>$"
  completion_contents = [completion[0]["content"] for completion in completions]
  matches = [re.match(pattern, content) for content in completion_contents]
  return [1.0 if match else 0.0 for match in matches]


def reward_func(completions, ground_truth, **kwargs):
  matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
  contents = [match.group(1) if match else "" for match in matches]
  return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def scheduled(completions, trainer_state, **kwargs):
  return [float(trainer_state.global_step)] * len(completions)


def logging_reward(completions, log_metric, log_extra, **kwargs):
  lengths = [len(c) for c in completions]
  log_metric("mean_length", sum(lengths) / len(lengths))
  log_extra("length", lengths)
  log_extra("note", ["not a number"] * len(completions))
  return [None if n == 0 else 1.0 for n in lengths]


async def async_reward(prompts, completions, **kwargs):
  await asyncio.sleep(0)
  return [float(len(p) > 3) for p in prompts]


def ids_reward(completion_ids, **kwargs):
  return [float(len(ids)) for ids in completion_ids]


def positional(p, c, **columns):
  """rlx's older convention, other parameter names: called by position."""
  return [float(len(x)) for x in c]


def scorer_for(**fns):
  return Scorer(build_rewards({name: {"fn": fn} for name, fn in fns.items()}), threads=2)


def test_trl_documentation_functions_run_unchanged():
  scorer = scorer_for(len=reward_len, boxed=reward_func, step=scheduled, log=logging_reward,
                      aio=async_reward, pos=positional)
  prompts = ["ab", "abcd", "abcdef"]
  completions = ["x" * 20, r"so \boxed{4}", ""]
  cols = {"ground_truth": ["1", "4", "2"], "prompt": prompts}
  r, metrics = scorer(prompts, completions, cols, step=7)
  np.testing.assert_array_equal(r[:, 0], [0, -8, -20])
  np.testing.assert_array_equal(r[:, 1], [0, 1, 0])
  np.testing.assert_array_equal(r[:, 2], [7, 7, 7])
  np.testing.assert_array_equal(r[:, 3], [1, 1, np.nan])
  np.testing.assert_array_equal(r[:, 4], [0, 1, 1])
  np.testing.assert_array_equal(r[:, 5], [20, 12, 0])
  assert metrics["reward/log/mean_length"] == (20 + 12 + 0) / 3
  assert metrics["reward/log/extra/length"] == (20 + 12 + 0) / 3
  assert "reward/log/extra/note" not in metrics
  assert metrics["reward/log/missing"] == 1 and metrics["reward/len/raised"] == 0
  # The step stays until the next call sets it.
  assert scorer(prompts, completions, cols)[0][0, 2] == 7
  scorer.close()


def test_chat_format_and_completion_ids():
  scorer = scorer_for(fmt=format_reward_func, ids=ids_reward)
  completions = [[{"role": "assistant", "content": "<think>a</think><answer>b</answer>"}],
                 [{"role": "assistant", "content": "no tags"}]]
  tokens = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
  ids = completion_id_lists(tokens, tokens > 0)
  assert ids == [[5, 6, 7], [8]]
  r, _ = scorer([[{"role": "user", "content": "q"}]] * 2, completions, {}, completion_ids=ids)
  np.testing.assert_array_equal(r, [[1, 3], [0, 1]])
  scorer.close()


def test_rlx_rewards_keep_working_and_bad_samples_are_isolated():
  from rlx.rewards import rules  # noqa: F401  (registers the rule rewards)

  def flaky(completions, **kwargs):
    if len(completions) > 1:
      raise ValueError("batch")
    if completions[0] == "bad":
      raise ValueError("sample")
    return [1.0]

  specs = build_rewards({"fmt": {"fn": "format", "kwargs": {"pattern": "ok.*"}},
                         "flaky": {"fn": flaky}})
  scorer = Scorer(specs, threads=2)
  r, m = scorer(["p", "p"], ["ok then", "bad"], {})
  np.testing.assert_array_equal(r[:, 0], [1, 0])
  np.testing.assert_array_equal(r[:, 1], [1, np.nan])
  assert m["reward/flaky/raised"] == 1
  scorer.close()


def test_functions_without_kwargs_get_only_what_they_name():
  def only_completions(completions):
    return [float(len(c)) for c in completions]

  def with_column(prompts, completions, answer):
    return [float(c == a) for c, a in zip(completions, answer)]

  scorer = scorer_for(a=only_completions, b=with_column)
  r, _ = scorer(["p", "q"], ["xy", "z"], {"answer": ["xy", "y"], "other": [1, 2]})
  np.testing.assert_array_equal(r, [[2, 1], [1, 0]])
  scorer.close()


def test_rlx_columns_receive_dataset_columns_only():
  seen = {}

  def rlx_style(prompts, completions, **columns):
    seen.update(columns)
    return [0.0] * len(completions)

  def rlx_style_with_state(prompts, completions, *, trainer_state, **columns):
    return [float(trainer_state.global_step)] * len(completions)

  scorer = scorer_for(a=rlx_style, b=rlx_style_with_state)
  r, _ = scorer(["p"], ["c"], {"answer": ["1"]}, step=3)
  assert set(seen) == {"answer"} and r[0, 1] == 3
  scorer.close()


def test_trainer_passes_step_completion_ids_and_logged_metrics(tmp_path):
  """Through train_rl: trainer_state.global_step is the RL step, completion_ids
  are the sampled tokens, and log_metric values land in metrics.jsonl."""
  import json
  import os

  from rlx.data import TASKS
  from rlx.rewards.registry import REWARD_FNS
  from rlx.train.config import load_config
  from rlx.train.metrics import read_jsonl
  from rlx.train.rl import train_rl

  seen = []

  @REWARD_FNS.register("test/trl_style", overwrite=True)
  def trl_style(completions, completion_ids, trainer_state, log_metric, **kwargs):
    seen.append((trainer_state.global_step, trainer_state.max_steps, completion_ids))
    log_metric("ids_per_completion", float(np.mean([len(i) for i in completion_ids])))
    return [float(len(i) % 3) for i in completion_ids]

  rows = TASKS.get("arith")().make_examples(seed=0, n=16)
  data = tmp_path / "arith.jsonl"
  data.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "answer", "max_len")}) + "\n"
                          for r in rows))
  root = os.path.dirname(os.path.abspath(__file__))
  cfg = load_config(os.path.join(root, "configs", "tiny_rl.py"), f"data={data},steps=2")
  cfg.rewards = {"correct": {"fn": "arith/correct", "weight": 1.0},
                 "trl": {"fn": "test/trl_style", "weight": 1.0}}
  cfg.train.eval_every = 0
  cfg.train.export_hf = False
  train_rl(cfg, str(tmp_path / "run"))
  steps = [s for s, _, _ in seen]
  assert steps == [0, 1] and all(m == 2 for _, m, _ in seen)
  ids = seen[-1][2]
  assert len(ids) == 8 and all(isinstance(i, list) and 1 <= len(i) <= 12 for i in ids)
  logged = [r["reward/trl/ids_per_completion"] for r in read_jsonl(str(tmp_path / "run" /
                                                                       "metrics.jsonl"))
            if "reward/trl/ids_per_completion" in r]
  assert len(logged) == 2
  np.testing.assert_allclose(logged[-1], np.mean([len(i) for i in ids]), rtol=1e-6)
