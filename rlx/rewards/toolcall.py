"""Tool-call rewards of ToolRL (Qian et al. 2025, "ToolRL: Reward is All Tool
Learning Needs"), as used by GDPO's tool-calling experiments (NVlabs/GDPO,
verl-GDPO, which trains on ToolRL's data and reward with format and
correctness normalized separately).

Reproduced from ToolRL's `verl/utils/reward_score/rlla.py` with its default
settings (no schedule/ablation environment variables). The completion is the
assistant text, stripped. The gold `answer` is a ToolRL-style string: an
optional `<tool_call>` block with one JSON object per line
(`{"name": ..., "parameters": {...}}`) and/or a `<response>` block.

Format reward, in {0, 1} (re.search with DOTALL, `^`/`$` anchors):
  gold has <response> only:  ^<think>.*?</think>\\n<response>.*?</response>$,
                             one <response> and one </response>
  gold has <tool_call> only: ^<think>.*?</think>\\n<tool_call>\\n.*?\\n</tool_call>$,
                             one <tool_call> and one </tool_call>
  gold has both:             ^<think>.*?</think>\\n<tool_call>\\n.*?\\n</tool_call>\\n
                             <response>.*?</response>$ (one pattern),
                             each of the four tags exactly once
  gold has neither:          ^<think>.*?</think>$

Correctness reward, in [-3, 3] (R_max = 3, R_min = -3):
  gold without <tool_call>: 0.
  the completion has no <tool_call>...</tool_call>, a line of it is not JSON,
  or a call lacks "name"/"parameters" (any error while scoring): R_min.
  predicted calls == gold calls (same list, same order): R_max.
  otherwise, with match(A, B) = 1 if A == B (as lists), 0 if either is empty,
  else |A ∩ B| / (|A| + |B| - |A ∩ B|) on multisets:
    S = match(gold names, predicted names)
        + sum over gold calls g (in order) of the best unused predicted call p
          with p.name == g.name, maximizing
          match(keys(g.params), keys(p.params)) + #{k in g.params: p.params[k] == g.params[k]},
          counted only if that best total is > 0 (the call p is then used up);
    S_max = 1 + sum over gold calls of (1 + len(g.params));
    R = (R_max - R_min) * S / S_max + R_min.
"""
from __future__ import annotations

import collections
import json
import logging
import re
from typing import Any, Sequence

from rlx.rewards.registry import REWARD_FNS
from rlx.rewards.rules import completion_texts, get_column, named_partial

log = logging.getLogger(__name__)

R_MAX, R_MIN = 3.0, -3.0


def match_score(list1: list[Any], list2: list[Any]) -> float:
  """ToolRL's multiset Jaccard similarity (1.0 for equal lists, order-sensitive)."""
  if list1 == list2:
    return 1.0
  if not list1 or not list2:
    return 0.0
  c1, c2 = collections.Counter(list1), collections.Counter(list2)
  inter = sum(min(c1[k], c2[k]) for k in c1.keys() & c2.keys())
  union = len(list1) + len(list2) - inter
  return inter / union if union > 0 else 0.0


def tool_call_score(gold_calls: list[dict[str, Any]], pred_calls: list[Any], *,
                    r_max: float = R_MAX, r_min: float = R_MIN) -> float:
  """ToolRL correctness of parsed calls (raises on malformed predicted calls)."""
  if gold_calls == pred_calls:
    return r_max
  score = match_score([g["name"] for g in gold_calls], [p["name"] for p in pred_calls])
  local_max = 1.0
  used: set[int] = set()
  for g in gold_calls:
    g_params = g["parameters"]
    local_max += 1.0 + len(g_params)
    best, best_i = 0.0, -1
    for i, p in enumerate(pred_calls):
      if i in used or p["name"] != g["name"]:
        continue
      p_params = p["parameters"]
      total = match_score(list(g_params.keys()), list(p_params.keys()))
      total += sum(1.0 for k, v in g_params.items() if k in p_params and p_params[k] == v)
      if total > best:
        best, best_i = total, i
    if best_i >= 0:
      used.add(best_i)
      score += best
  return (r_max - r_min) * score / local_max + r_min


def _block(text: str, tag: str) -> str:
  """ToolRL's split-based extraction of the first <tag>...</tag> block."""
  return text.split(f"<{tag}>")[1].split(f"</{tag}>")[0].strip()


def parse_tool_calls(text: str) -> list[Any]:
  """JSON objects, one per line, of the first <tool_call> block (raises if malformed)."""
  if "<tool_call>" not in text or "</tool_call>" not in text:
    raise ValueError("no <tool_call> block")
  return [json.loads(line) for line in _block(text, "tool_call").split("\n")]


def toolrl_format_score(response: str, gold: str) -> float:
  """ToolRL format reward of one response (see module docstring)."""
  response = response.strip()
  has_resp, has_call = "<response>" in gold, "<tool_call>" in gold
  if has_resp and not has_call:
    ok = (re.search(r"^<think>.*?</think>\n<response>.*?</response>$", response, re.DOTALL)
          and response.count("<response>") == 1 and response.count("</response>") == 1)
  elif has_call and not has_resp:
    ok = (re.search(r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>$", response,
                    re.DOTALL)
          and response.count("<tool_call>") == 1 and response.count("</tool_call>") == 1)
  elif has_call and has_resp:
    ok = (re.search(r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>\n"
                    r"<response>.*?</response>$", response, re.DOTALL)
          and response.count("<tool_call>") == 1 and response.count("</tool_call>") == 1
          and response.count("<response>") == 1 and response.count("</response>") == 1)
  else:
    ok = re.search(r"^<think>.*?</think>$", response, re.DOTALL)
  return 1.0 if ok else 0.0


def toolrl_correctness_score(response: str, gold: str, *, r_max: float = R_MAX,
                             r_min: float = R_MIN) -> float | None:
  """ToolRL correctness reward of one response (see module docstring); None if
  the gold calls do not parse (a data error)."""
  if "<tool_call>" not in gold:
    return 0.0
  try:
    gold_calls = parse_tool_calls(gold)
  except Exception:  # pylint: disable=broad-except
    log.warning("toolrl_correctness: gold tool calls do not parse: %r", gold[:200])
    return None
  try:
    pred_calls = parse_tool_calls(response.strip())
    return tool_call_score(gold_calls, pred_calls, r_max=r_max, r_min=r_min)
  except Exception:  # pylint: disable=broad-except
    return r_min


def gold_to_text(gold: Any) -> str:
  """Accepts a ToolRL answer string, or a list of {"name", "parameters"} calls."""
  if isinstance(gold, str):
    return gold
  calls = list(gold)
  lines = "\n".join(json.dumps(c) for c in calls)
  return f"<tool_call>\n{lines}\n</tool_call>"


@REWARD_FNS.register("toolrl_format")
def toolrl_format_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                         answer_column: str | Sequence[str] = ("answer", "ground_truth"),
                         **columns: Any) -> list[float | None]:
  """ToolRL format reward in {0, 1}; the expected layout depends on the gold answer."""
  del prompts
  texts = completion_texts(completions)
  gold = get_column(columns, answer_column, len(texts), "toolrl_format")
  return [None if g is None else toolrl_format_score(t, gold_to_text(g))
          for t, g in zip(texts, gold)]


@REWARD_FNS.register("toolrl_correctness")
def toolrl_correctness_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                              answer_column: str | Sequence[str] = ("answer", "ground_truth"),
                              r_max: float = R_MAX, r_min: float = R_MIN,
                              **columns: Any) -> list[float | None]:
  """ToolRL tool-call correctness in [r_min, r_max] (default [-3, 3])."""
  del prompts
  texts = completion_texts(completions)
  gold = get_column(columns, answer_column, len(texts), "toolrl_correctness")
  return [None if g is None else
          toolrl_correctness_score(t, gold_to_text(g), r_max=r_max, r_min=r_min)
          for t, g in zip(texts, gold)]


def make_toolrl_correctness_reward(*, r_max: float = R_MAX, r_min: float = R_MIN,
                                   answer_column: str | Sequence[str] = ("answer", "ground_truth"),
                                   name: str = "toolrl_correctness"):
  return named_partial(toolrl_correctness_reward, name, r_max=r_max, r_min=r_min,
                       answer_column=answer_column)
