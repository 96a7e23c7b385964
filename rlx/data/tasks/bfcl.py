"""`bfcl`: function calling on the Berkeley Function Calling Leaderboard (v4) data.

Data: the `bfcl-eval` package's `data/BFCL_v4_{category}.json` (one JSON
object per line: `id`, `question` (turns of chat messages), `function` (the
tool docs)) and `data/possible_answer/` (`ground_truth`: per call
{function: {argument: [accepted values]}}, "" meaning "may be omitted").
Categories (option `categories`): the single-turn Python AST ones,
simple_python, multiple, parallel, parallel_multiple, and the live_* ones.

Prompt (chat messages; the tokenizer's chat template renders them): a system
message with the tools as JSON and the output convention, then the question:

  <tool_call>[{"name": "f", "arguments": {"a": 1}}, ...]</tool_call>

(the function-calling convention of SmolLM2-Instruct's training data; one
block holding a JSON list of calls, or one call object).

Rewards (columns 'functions' and 'ground_truth', JSON strings):
  bfcl/format   1 if the completion is exactly one such block (whitespace
                around it allowed) whose JSON is a list of objects with a
                string "name" and an object "arguments" (or one such object).
  bfcl/correct  graded, in [0, 1], ToolRL-style (as GDPO's tool-calling reward):
                with the calls of the first <tool_call> block (to its closing
                tag or the end of the text; 0 if it is not JSON),
                S = match(gold names, predicted names) + sum over gold calls g
                of the best unused predicted call p with p.name == g.name,
                scoring 1 if p has every required argument and no unknown one,
                plus 1 per gold argument that p gives an accepted value (or
                omits where that is allowed); correct = S / S_max with
                S_max = 1 + sum(1 + #args of g). match is ToolRL's multiset
                Jaccard of the names. correct == 1 exactly when BFCL's AST
                checker accepts the calls (tests/test_real_tasks.py checks
                this against bfcl-eval's own checker).
SFT targets (the row's 'demo', for a warm start with config.trainer='sft'):
the ground truth in the prompt's convention, one block with every gold call
in order, each argument at its first accepted value that the checker takes
(a dict value: each key at its first value), left out when none is and
omission is accepted. They score format = 1, and correct = 1 except where
the ground truth contradicts the function docs (5 live_* rows).
Values are compared as BFCL's Python AST checker does (`accepted_value`):
declared types (int accepted for float), strings compared after removing
spaces and ,./-_*^ and lower-casing, lists and dicts element-wise.
We re-implement the checker because bfcl-eval's module imports its API
clients (anthropic, openai, ...) and gives no partial credit.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

from rlx.data.tasks.base import TASKS, as_random
from rlx.rewards.rules import completion_text, get_column
from rlx.data.tasks.dataset import DatasetTask, Filtered, file_records, package_dir
from rlx.rewards.registry import REWARD_FNS
from rlx.rewards.toolcall import match_score

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple",
              "live_multiple", "live_parallel", "live_parallel_multiple")
DEFAULT_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")

SYSTEM_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible "
    "functions. Based on the question, you will need to make one or more function/tool calls "
    "to achieve the purpose.\n\nYou have access to the following tools:\n<tools>{tools}</tools>"
    "\n\nThe output MUST strictly adhere to the following format, and NO other text MUST be "
    "included.\n<tool_call>[{{\"name\": \"func_name1\", \"arguments\": {{\"argument1\": "
    "\"value1\", \"argument2\": \"value2\"}}}}, ... (more tool calls as required)]</tool_call>")

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK_RE = re.compile(r"^\s*<tool_call>(.*?)</tool_call>\s*$", re.DOTALL)

# BFCL's Python type names.
_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list,
          "tuple": list, "dict": dict, "any": str}
_NESTED = ("array", "tuple")


# --------------------------------------------------------------------------
# Parsing.
# --------------------------------------------------------------------------
def _as_calls(obj: Any) -> list[dict[str, Any]] | None:
  """[{'name': str, 'arguments': dict}] from a parsed block, or None if malformed."""
  calls = obj if isinstance(obj, list) else [obj]
  ok = all(isinstance(c, dict) and set(c) == {"name", "arguments"}
           and isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in calls)
  return calls if ok and calls else None


def format_score(text: str) -> float:
  m = _BLOCK_RE.match(text)
  if m is None or text.count(OPEN) != 1 or text.count(CLOSE) != 1:
    return 0.0
  try:
    return float(_as_calls(json.loads(m.group(1))) is not None)
  except ValueError:
    return 0.0


def parse_calls(text: str) -> list[dict[str, Any]] | None:
  """Calls of the first <tool_call> block (to its end tag or the text's end)."""
  i = text.find(OPEN)
  if i < 0:
    return None
  body = text[i + len(OPEN):]
  j = body.find(CLOSE)
  body = body[:j] if j >= 0 else body
  try:
    obj = json.loads(body)
  except ValueError:
    return None
  calls = obj if isinstance(obj, list) else [obj] if isinstance(obj, dict) else None
  if calls is None:
    return None
  # Malformed entries count as calls that match nothing.
  return [{"name": c.get("name") if isinstance(c.get("name"), str) else None,
           "arguments": c.get("arguments")} if isinstance(c, dict) else {"name": None}
          for c in calls]


# --------------------------------------------------------------------------
# BFCL's value semantics (Python AST checker).
# --------------------------------------------------------------------------
def standardize(s: str) -> str:
  return re.sub(r"[ \,\.\/\-\_\*\^]", "", s).lower().replace("'", '"')


def _answer_type(accepted: list[Any]) -> type | None:
  for a in accepted:
    if a != "":
      return type(a)
  return None


def _type_ok(value: Any, accepted: list[Any], want: type, nested: type | None) -> tuple[bool, bool]:
  """(type accepted, value is a 'variable') as BFCL's one-level type_checker."""
  atype = _answer_type(accepted)
  variable = atype is not None and atype != want
  if type(value) == want:  # pylint: disable=unidiomatic-typecheck
    if nested is None:
      return True, variable
    for acc in accepted:
      if type(acc) == list and not all(  # pylint: disable=unidiomatic-typecheck
          _type_ok(v, acc, nested, None)[0] for v in value):
        continue
      return True, variable
  if atype is not None and type(value) == atype:  # pylint: disable=unidiomatic-typecheck
    return True, True
  return False, variable


def _std(v: Any) -> Any:
  return standardize(v) if type(v) == str else v  # pylint: disable=unidiomatic-typecheck


def _dict_ok(value: dict[str, Any], accepted: list[Any]) -> bool:
  for acc in accepted:
    if acc == "":
      continue
    if all(k in acc and _std(v) in [_std(a) for a in acc[k]] for k, v in value.items()) and all(
        k in value or "" in vals for k, vals in acc.items()):
      return True
  return False


def accepted_value(value: Any, accepted: list[Any], param_doc: dict[str, Any]) -> bool:
  """Whether BFCL accepts `value` for a parameter documented by `param_doc`."""
  tname = param_doc.get("type")
  if tname not in _TYPES:
    return False
  want = _TYPES[tname]
  nested = None
  if tname in _NESTED:
    item = (param_doc.get("items") or {}).get("type")
    if item not in _TYPES:
      return False
    nested = _TYPES[item]
  if tname == "float" and type(value) == int:  # pylint: disable=unidiomatic-typecheck
    value = float(value)
  ok, variable = _type_ok(value, accepted, want, nested)
  if not ok:
    return False
  if not variable:
    if want == dict:
      return _dict_ok(value, accepted)
    if want == list and nested == dict:
      return any(len(acc) == len(value)
                 and all(isinstance(v, dict) and _dict_ok(v, [a]) for v, a in zip(value, acc))
                 for acc in accepted if isinstance(acc, (list, str)))
    if want == str:
      return standardize(value) in [standardize(a) for a in accepted if isinstance(a, str)]
    if want == list:
      # As BFCL: each accepted value is iterated ("" as the empty list).
      return [_std(v) for v in value] in [[_std(a) for a in acc] for acc in accepted
                                          if isinstance(acc, (list, str))]
  return value in accepted


def call_points(call: dict[str, Any], gold_args: dict[str, list[Any]],
                doc: dict[str, Any]) -> tuple[float, float]:
  """(points, max points) of one predicted call for a gold call of the same name."""
  args = call.get("arguments")
  args = args if isinstance(args, dict) else {}
  params = doc.get("parameters", {})
  props, required = params.get("properties", {}), params.get("required", [])
  structure = all(r in args for r in required) and all(
      k in props and k in gold_args for k in args)
  values = sum((k in args and k in props and accepted_value(args[k], acc, props[k]))
               or (k not in args and "" in acc) for k, acc in gold_args.items())
  return float(structure) + values, 1.0 + len(gold_args)


def correct_score(calls: list[dict[str, Any]] | None, functions: list[dict[str, Any]],
                  ground_truth: list[dict[str, dict[str, list[Any]]]]) -> float:
  """Graded BFCL correctness in [0, 1] (see module docstring)."""
  if not calls:
    return 0.0
  docs = {f["name"]: f for f in functions}
  gold = [next(iter(g.items())) for g in ground_truth]
  score = match_score([n for n, _ in gold], [c.get("name") for c in calls])
  total = 1.0
  used: set[int] = set()
  for name, gold_args in gold:
    best, best_i, top = 0.0, -1, 1.0 + len(gold_args)
    for i, c in enumerate(calls):
      if i in used or c.get("name") != name:
        continue
      pts, top = call_points(c, gold_args, docs.get(name, {}))
      if pts > best:
        best, best_i = pts, i
    total += top
    if best_i >= 0:
      used.add(best_i)
      score += best
  return score / total


def _loads(x: Any) -> Any:
  return json.loads(x) if isinstance(x, str) else x


@REWARD_FNS.register("bfcl/format")
def format_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the completion is exactly <tool_call>[{"name", "arguments"}, ...]</tool_call>."""
  del prompts, columns
  return [format_score(completion_text(c)) for c in completions]


@REWARD_FNS.register("bfcl/correct")
def correct_reward(prompts, completions, **columns) -> list[float | None]:
  """Graded BFCL AST correctness in [0, 1]; columns 'functions', 'ground_truth'."""
  del prompts
  fns = get_column(columns, "functions", len(completions), "bfcl/correct")
  gts = get_column(columns, "ground_truth", len(completions), "bfcl/correct")
  return [None if f is None or g is None else
          correct_score(parse_calls(completion_text(c)), _loads(f), _loads(g))
          for c, f, g in zip(completions, fns, gts)]


def _first_value(value: Any) -> Any:
  # A dict value is accepted per key ({key: [values]}); a list of dicts per element.
  if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
    return {k: _first_value(v[0]) for k, v in value.items() if v and v[0] != ""}
  if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
    return [_first_value(v) for v in value]
  return value


def demo_args(gold_args: dict[str, list[Any]], doc: dict[str, Any]) -> dict[str, Any]:
  """Each argument at its first value that `accepted_value` takes; left out if
  none is and omission is accepted ("" among the values), e.g. an argument the
  function's doc does not declare."""
  props = doc.get("parameters", {}).get("properties", {})
  out = {}
  for k, acc in gold_args.items():
    values = [_first_value(v) for v in acc if v != ""]
    ok = [v for v in values if k in props and accepted_value(v, acc, props[k])]
    if ok or (values and "" not in acc):
      out[k] = (ok or values)[0]
  return out


def demo_text(functions: Sequence[dict[str, Any]],
              ground_truth: Sequence[dict[str, dict[str, list[Any]]]]) -> str:
  """The SFT target of a ground truth: one block with its calls in order."""
  docs = {f["name"]: f for f in functions}
  calls = [{"name": name, "arguments": demo_args(args, docs.get(name, {}))}
           for g in ground_truth for name, args in g.items()]
  return OPEN + json.dumps(calls, ensure_ascii=False) + CLOSE


def system_prompt(functions: Sequence[dict[str, Any]]) -> str:
  return SYSTEM_PROMPT.format(tools=json.dumps(list(functions), ensure_ascii=False))


@TASKS.register("bfcl")
class BFCLTask(DatasetTask):
  """BFCL v4 single-turn Python function calling; rewards format + correct."""

  name = "bfcl"
  default_rewards = {"bfcl/format": 1.0, "bfcl/correct": 1.0}

  def __init__(self, categories: Sequence[str] = DEFAULT_CATEGORIES, split_seed: int = 0,
               max_prompt_chars: int = 0):
    """`max_prompt_chars` > 0 drops (and counts) rows whose messages are longer."""
    super().__init__(split_seed)
    categories = (categories,) if isinstance(categories, str) else tuple(categories)
    bad = [c for c in categories if c not in CATEGORIES]
    if bad or not categories:
      raise ValueError(f"bfcl: unknown categories {bad}; valid: {', '.join(CATEGORIES)}.")
    self.categories = categories
    self.max_prompt_chars = int(max_prompt_chars)

  def cache_key(self):
    return (package_dir("bfcl_eval"), self.categories, self.max_prompt_chars)

  def records(self):
    data = os.path.join(package_dir("bfcl_eval"), "data")
    for cat in self.categories:
      answers = {rid: rec for rid, rec in file_records(
          os.path.join(data, "possible_answer", f"BFCL_v4_{cat}.json"))}
      for rid, rec in file_records(os.path.join(data, f"BFCL_v4_{cat}.json")):
        if isinstance(rec, dict):
          rec = dict(rec, category=cat, answer=answers.get(rid))
        yield rid, rec

  def to_row(self, record: dict[str, Any]) -> dict[str, Any]:
    if record.get("answer") is None:
      raise KeyError("no possible_answer entry")
    if isinstance(record["answer"], Exception):
      raise record["answer"]
    functions, gold = record["function"], record["answer"]["ground_truth"]
    turns = record["question"]
    if len(turns) != 1:
      raise ValueError(f"{len(turns)} turns (single-turn rows only)")
    messages = [dict(role=m["role"], content=str(m["content"])) for m in turns[0]]
    for f in functions:
      if not isinstance(f["name"], str) or not isinstance(f["parameters"]["properties"], dict):
        raise TypeError("a function without name/parameters.properties")
    for g in gold:
      if not isinstance(g, dict) or len(g) != 1:
        raise ValueError(f"ground truth call {g!r} is not {{name: args}}")
    prompt = [{"role": "system", "content": system_prompt(functions)}] + messages
    if self.max_prompt_chars and sum(len(m["content"]) for m in prompt) > self.max_prompt_chars:
      raise Filtered(f"prompt longer than max_prompt_chars={self.max_prompt_chars}")
    return {"prompt": prompt, "id": record["id"], "category": record["category"],
            "functions": json.dumps(functions), "ground_truth": json.dumps(gold),
            "demo": demo_text(functions, gold)}

  def corrupt(self, demo: str, rng: Any, rate: float,
              row: dict[str, Any] | None = None) -> str:
    """With prob. `rate`: no closing tag (format 0) or one argument null (correct < 1)."""
    del row
    rng = as_random(rng)
    if rng.random() >= rate:
      return demo
    calls = json.loads(demo[len(OPEN):-len(CLOSE)])
    with_args = [c for c in calls if c["arguments"]]
    if not with_args or rng.random() < 0.5:
      return demo[:-len(CLOSE)]
    args = rng.choice(with_args)["arguments"]
    args[rng.choice(sorted(args))] = None
    return OPEN + json.dumps(calls, ensure_ascii=False) + CLOSE
