"""`reasoning_gym`: a procedurally generated reasoning dataset of the
`reasoning-gym` package, chosen by name, scored by that dataset's own scorer.

    config.data.task = "reasoning_gym"
    config.data.task_options = {"dataset": "basic_arithmetic", "config": {"max_terms": 4}}

Prompt (chat messages): a system message asking for the reasoning in
<think></think> and the final answer in <answer></answer>, then the question.

Rewards (column 'rg' holds the dataset name, its options and the entry):
  reasoning_gym/correct  the dataset's `score_answer(answer, entry)` (in [0, 1],
                         partial credit where the dataset gives it) on the text
                         of the last <answer>...</answer> (0 without one).
  reasoning_gym/format   1 if the completion is exactly
                         <think>...</think> <answer>...</answer> (whitespace
                         between and around), one of each tag.
  reasoning_gym/length   1 if the completion has at most `max_len` characters
                         (keyword, default 600): with correct and format, the
                         GDPO math setting's three rewards.

Splits: a generated problem is held out when a stable hash of
(`split_seed`, question) falls in the `test_fraction` share, so train and test
questions never overlap; rows are generated with a seed from (split, seed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from rlx.data.tasks.base import SPLITS, TASKS, Task, split_of
from rlx.rewards.rules import completion_text, get_column
from rlx.rewards.registry import REWARD_FNS

SYSTEM_PROMPT = ("Think about the problem step by step inside <think> </think>, then give "
                 "only the final answer inside <answer> </answer>.")
MAX_LEN = 600
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)

_DATASETS: dict[str, Any] = {}


def make_dataset(name: str, options: dict[str, Any], seed: int, size: int):
  import reasoning_gym  # pylint: disable=g-import-not-at-top
  return reasoning_gym.create_dataset(name, seed=seed, size=size, **options)


def scorer_of(name: str, options: dict[str, Any]):
  """A dataset object of `name` with `options`, for its `score_answer` (cached)."""
  key = json.dumps([name, options], sort_keys=True)
  if key not in _DATASETS:
    _DATASETS[key] = make_dataset(name, options, seed=0, size=1)
  return _DATASETS[key]


def extract_answer(text: str) -> str | None:
  found = _ANSWER_RE.findall(text)
  return found[-1].strip() if found else None


def correct_score(text: str, rg: dict[str, Any]) -> float:
  answer = extract_answer(text)
  if answer is None:
    return 0.0
  ds = scorer_of(rg["dataset"], rg["options"])
  return float(ds.score_answer(answer=answer, entry=rg["entry"]))


@REWARD_FNS.register("reasoning_gym/correct")
def correct_reward(prompts, completions, **columns) -> list[float | None]:
  """The dataset's own score of the last <answer>...</answer>; column 'rg'."""
  del prompts
  rgs = get_column(columns, "rg", len(completions), "reasoning_gym/correct")
  return [None if r is None else correct_score(completion_text(c), r)
          for c, r in zip(completions, rgs)]


@REWARD_FNS.register("reasoning_gym/format")
def format_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the completion is exactly <think>...</think> <answer>...</answer>."""
  del prompts, columns
  out = []
  for c in completions:
    t = completion_text(c)
    ok = (_FORMAT_RE.match(t) is not None and t.count("<think>") == 1 and t.count("</think>") == 1
          and t.count("<answer>") == 1 and t.count("</answer>") == 1)
    out.append(float(ok))
  return out


@REWARD_FNS.register("reasoning_gym/length")
def length_reward(prompts, completions, *, max_len: int = MAX_LEN,
                  **columns) -> list[float | None]:
  """1 if the completion has at most `max_len` characters."""
  del prompts, columns
  return [float(len(completion_text(c)) <= int(max_len)) for c in completions]


@TASKS.register("reasoning_gym")
class ReasoningGymTask(Task):
  """A reasoning-gym dataset by name; rewards correct, format and length."""

  name = "reasoning_gym"
  test_fraction = 0.2
  default_rewards = {"reasoning_gym/correct": 1.0, "reasoning_gym/format": 0.5,
                     "reasoning_gym/length": 0.5}

  def __init__(self, dataset: str = "basic_arithmetic", config: dict[str, Any] | None = None,
               split_seed: int = 0):
    import reasoning_gym  # pylint: disable=g-import-not-at-top
    names = sorted(reasoning_gym.factory.DATASETS)
    if dataset not in names:
      raise ValueError(f"reasoning_gym: unknown dataset {dataset!r}; valid: {', '.join(names)}.")
    self.dataset, self.options = dataset, dict(config or {})
    self.split_seed = int(split_seed)
    self.skipped: dict[str, str] = {}

  def make_examples(self, seed: int, n: int, split: str = "train") -> list[dict[str, Any]]:
    """`n` rows of distinct `split` questions, deterministic in (split, seed)."""
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(SPLITS)}.")
    share = self.test_fraction if split == "test" else 1 - self.test_fraction
    size = int(n / share * 1.2) + 16
    gen_seed = int.from_bytes(hashlib.blake2b(
        f"{self.split_seed}/{split}/{int(seed)}".encode(), digest_size=4).digest(), "big")
    ds = make_dataset(self.dataset, self.options, seed=gen_seed, size=size)
    rows, seen = [], set()
    for i in range(size):
      try:
        entry = ds[i]
        question = str(entry["question"])
      except Exception as e:  # pylint: disable=broad-except  # a generator bug: skip the row
        self.skipped[f"{self.dataset}[{gen_seed}:{i}]"] = f"{type(e).__name__}: {e}"[:200]
        continue
      if split_of(f"{self.split_seed}/{question}", self.test_fraction) != split or (
          question in seen):
        continue
      seen.add(question)
      prompt = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question}]
      rows.append({"prompt": prompt, "answer": str(entry.get("answer")), "task": self.name,
                   "rg": {"dataset": self.dataset, "options": self.options, "entry": entry}})
      if len(rows) == n:
        break
    if self.skipped:
      logging.getLogger(__name__).warning(
          "reasoning_gym: skipped %d row(s) the generator failed on: %s", len(self.skipped),
          ", ".join(list(self.skipped)[:20]))
    return rows

  def data_metrics(self) -> dict[str, float]:
    return {"data/skipped": float(len(self.skipped))}
