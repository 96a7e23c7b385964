"""Synthetic preference pairs with a known ranking rule (reward-model tests, demos).

    rows = make_preference_rows("count", n=400, seed=0)
    # {"prompt": "Write a and b:", "chosen": "abaabaaabbab",
    #  "rejected": "abbbabbabbab", "tie": False}

Rules (the true reward of a response, `true_reward(rule, prompt, response)`):
  count   responses are `length` random letters from "ab"; reward = number of 'a'.
  arith   prompts "x+y=" (x, y in 0..9); reward 1 for the right sum, 0 otherwise;
          rejected responses are wrong sums (off by 1..3).
A pair's chosen response has the strictly higher true reward; with
`tie_rate` > 0 that fraction of pairs are ties (equal true reward, different
texts, tie=True; chosen/rejected order then means nothing).

For the other reward-model layouts (count rule only):
  make_multi_response_rows  {prompt, responses: M texts, best: index of the most 'a's}
  make_attribute_rows       {prompt, response, a_count, starts_a} (two attributes:
                            the number of 'a's and 1.0 if the text starts with 'a')
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

PREFERENCE_RULES = ("count", "arith")
COUNT_PROMPT = "Write a and b:"


def true_reward(rule: str, prompt: str, response: str) -> float:
  """The ground-truth reward of `response` under `rule` (see module docstring)."""
  if rule == "count":
    return float(response.count("a"))
  if rule == "arith":
    x, y = prompt.rstrip("=").split("+")
    return float(response.strip() == str(int(x) + int(y)))
  raise ValueError(f"Unknown preference rule {rule!r}. Valid choices: "
                   f"{', '.join(PREFERENCE_RULES)}.")


def _count_text(rng: np.random.Generator, n_a: int, length: int) -> str:
  chars = np.array(["a"] * n_a + ["b"] * (length - n_a))
  return "".join(rng.permutation(chars))


def _count_pair(rng: np.random.Generator, length: int, tie: bool) -> tuple[str, str]:
  if tie:
    k = int(rng.integers(0, length + 1))
    a = _count_text(rng, k, length)
    b = _count_text(rng, k, length)
    if 0 < k < length:
      while b == a:
        b = _count_text(rng, k, length)
    return a, b
  hi, lo = sorted(rng.choice(length + 1, size=2, replace=False).tolist(), reverse=True)
  return _count_text(rng, hi, length), _count_text(rng, lo, length)


def _arith_pair(rng: np.random.Generator, tie: bool) -> tuple[str, str, str]:
  x, y = (int(v) for v in rng.integers(0, 10, size=2))
  s = x + y
  wrong = [s + d for d in (-3, -2, -1, 1, 2, 3) if s + d >= 0]
  if tie:
    a, b = rng.choice(wrong, size=2, replace=False)
    return f"{x}+{y}=", str(a), str(b)
  return f"{x}+{y}=", str(s), str(rng.choice(wrong))


def make_preference_rows(rule: str = "count", n: int = 400, *, seed: int = 0,
                         tie_rate: float = 0.0, length: int = 12) -> list[dict[str, Any]]:
  """n preference rows {prompt, chosen, rejected, tie} under a known rule.

  Args:
    rule: one of PREFERENCE_RULES.
    n: number of pairs.
    seed: numpy seed (same seed, same rows).
    tie_rate: fraction of tie pairs (equal true reward).
    length: response length of the 'count' rule.
  """
  if rule not in PREFERENCE_RULES:
    raise ValueError(f"Unknown preference rule {rule!r}. Valid choices: "
                     f"{', '.join(PREFERENCE_RULES)}.")
  if not 0.0 <= tie_rate <= 1.0:
    raise ValueError(f"tie_rate must be in [0, 1], got {tie_rate}.")
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    tie = bool(rng.random() < tie_rate)
    if rule == "count":
      chosen, rejected = _count_pair(rng, length, tie)
      prompt = COUNT_PROMPT
    else:
      prompt, chosen, rejected = _arith_pair(rng, tie)
    rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "tie": tie})
  return rows


def make_multi_response_rows(n: int = 400, *, m: int = 4, seed: int = 0,
                             length: int = 12) -> list[dict[str, Any]]:
  """n rows of m 'count' responses with distinct numbers of 'a's; best = the most 'a's."""
  if not 2 <= m <= length + 1:
    raise ValueError(f"m must be in [2, length + 1] = [2, {length + 1}], got {m}.")
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    counts = rng.choice(length + 1, size=m, replace=False)
    rows.append({"prompt": COUNT_PROMPT,
                 "responses": [_count_text(rng, int(k), length) for k in counts],
                 "best": int(np.argmax(counts))})
  return rows


ATTRIBUTES = ("a_count", "starts_a")


def make_attribute_rows(n: int = 400, *, seed: int = 0, length: int = 12) -> list[dict[str, Any]]:
  """n rows {prompt, response, a_count, starts_a} of random 'count' responses."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    text = _count_text(rng, int(rng.integers(0, length + 1)), length)
    rows.append({"prompt": COUNT_PROMPT, "response": text, "a_count": float(text.count("a")),
                 "starts_a": float(text.startswith("a"))})
  return rows


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str:
  """Writes rows as JSON lines; returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return path
