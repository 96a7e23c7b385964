"""`toolcall`: turn a request in words into one formatted function call.

Prompt: 2-3 tool specs (the right one among distractors) and a request, e.g.

  Tools: timer(mins:int); weather(city:str,unit:c|f)
  User: How warm is it in Paris in celsius?
  Call:

Demo completion (compact JSON between tags):

  <call>{"name":"weather","args":{"city":"Paris","unit":"c"}}</call>

Rewards (column 'answer' holds the reference call as JSON):
  toolcall/format   1 if the completion is exactly <call>JSON</call> with JSON an
                    object with keys "name" (string) and "args" (object of
                    scalars), else 0.
  toolcall/correct  graded, ToolRL-like: 0 if no JSON object is found or the tool
                    name is wrong; else (1 + Jaccard(arg keys) + share of reference
                    args with the exact value and type) / 3. Parsing is lenient
                    (first '{' to last '}'), so a call with broken tags can still
                    be correct: the two rewards are not redundant.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any

from rlx.data.tasks.base import TASKS, Task, as_random
from rlx.rewards.rules import completion_text, get_column
from rlx.rewards.registry import REWARD_FNS

CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito",
          "Dakar", "Hanoi", "Seoul", "Kyiv", "Bern", "Doha", "Baku", "Riga",
          "Lagos", "Sofia", "Milan", "Perth")
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivan",
         "Jo", "Kai", "Lea", "Max", "Nia", "Omar")
SONGS = ("Yesterday", "Imagine", "Hello", "Faded", "Believer", "Angel", "Numb",
         "Creep", "Toxic", "Hurt", "Africa", "Roxanne")
WORDS = ("cat", "house", "water", "bread", "tree", "night", "book", "friend",
         "rain", "apple", "road", "sun", "milk", "door", "fire", "song")
UNITS = {"c": ("celsius", "degrees C"), "f": ("fahrenheit", "degrees F")}
CURRENCIES = {"usd": ("dollars", "US dollars"), "eur": ("euros", "EUR"),
              "gbp": ("pounds", "British pounds"), "jpy": ("yen", "Japanese yen")}
LANGS = {"fr": ("French",), "de": ("German",), "es": ("Spanish",), "it": ("Italian",)}

# name -> (params [(key, type shown in the spec, domain)], request templates).
TOOLS: dict[str, tuple[list[tuple[str, str, tuple[Any, ...]]], tuple[str, ...]]] = {
    "weather": ([("city", "str", CITIES), ("unit", "c|f", tuple(UNITS))],
                ("How warm is it in {city} in {unit}?",
                 "Weather for {city}, please, in {unit}.",
                 "Tell me the temperature in {city} ({unit}).")),
    "alarm": ([("hour", "int", tuple(range(24))), ("min", "int", tuple(range(0, 60, 5)))],
              ("Wake me up at {hour}:{min:02d}.",
               "Set an alarm for {hour}:{min:02d}.",
               "Alarm at {hour} h {min} min, please.")),
    "timer": ([("mins", "int", tuple(range(1, 91)))],
              ("Start a timer for {mins} minutes.",
               "Remind me in {mins} min.",
               "Countdown of {mins} minutes, please.")),
    "convert": ([("amount", "int", tuple(range(1, 1000))),
                 ("to", "usd|eur|gbp|jpy", tuple(CURRENCIES))],
                ("How much is {amount} in {to}?",
                 "Convert {amount} to {to}.",
                 "What are {amount} worth in {to}?")),
    "play": ([("song", "str", SONGS)],
             ("Play {song}.", "Put on the song {song}.", "I want to hear {song}.")),
    "call": ([("name", "str", NAMES)],
             ("Call {name}.", "Phone {name} for me.", "Ring {name}, please.")),
    "translate": ([("word", "str", WORDS), ("lang", "fr|de|es|it", tuple(LANGS))],
                  ("Translate {word} into {lang}.",
                   "How do you say {word} in {lang}?",
                   "What is {word} in {lang}?")),
    "book": ([("place", "str", NAMES), ("people", "int", tuple(range(1, 13)))],
             ("Book a table at {place} for {people}.",
              "Reserve {place} for {people} people.",
              "Table for {people} at {place}, please.")),
}
_WORDS_OF = {"unit": UNITS, "to": CURRENCIES, "lang": LANGS}

OPEN, CLOSE = "<call>", "</call>"
_FORMAT_RE = re.compile(r"^<call>(.*)</call>$", re.DOTALL)


def format_call(name: str, args: dict[str, Any]) -> str:
  """The canonical completion for a call."""
  body = json.dumps({"name": name, "args": args}, separators=(",", ":"))
  return f"{OPEN}{body}{CLOSE}"


def spec(name: str) -> str:
  params, _ = TOOLS[name]
  return f"{name}(" + ",".join(f"{k}:{t}" for k, t, _ in params) + ")"


def _is_scalar(v: Any) -> bool:
  return isinstance(v, (str, int, float, bool)) or v is None


def format_reward_one(text: str) -> float:
  m = _FORMAT_RE.match(text.strip())
  if m is None:
    return 0.0
  try:
    obj = json.loads(m.group(1))
  except ValueError:
    return 0.0
  ok = (isinstance(obj, dict) and list(obj) == ["name", "args"]
        and isinstance(obj["name"], str) and isinstance(obj["args"], dict)
        and all(_is_scalar(v) for v in obj["args"].values()))
  return float(ok)


def _lenient_parse(text: str) -> dict[str, Any] | None:
  i, j = text.find("{"), text.rfind("}")
  if i < 0 or j <= i:
    return None
  try:
    obj = json.loads(text[i:j + 1])
  except ValueError:
    return None
  return obj if isinstance(obj, dict) else None


def _same(a: Any, b: Any) -> bool:
  return type(a) is type(b) and a == b


def correct_reward_one(text: str, answer: dict[str, Any]) -> float:
  obj = _lenient_parse(text)
  if obj is None or obj.get("name") != answer["name"]:
    return 0.0
  args = obj.get("args")
  args = args if isinstance(args, dict) else {}
  ref = answer["args"]
  union = set(args) | set(ref)
  jaccard = len(set(args) & set(ref)) / len(union) if union else 1.0
  values = sum(_same(args.get(k), v) for k, v in ref.items()) / len(ref) if ref else 1.0
  return (1.0 + jaccard + values) / 3.0


def _answer(a: Any) -> dict[str, Any]:
  return json.loads(a) if isinstance(a, str) else a


@REWARD_FNS.register("toolcall/format")
def format_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the completion is exactly <call>{"name": str, "args": {...}}</call>."""
  del prompts, columns
  return [format_reward_one(completion_text(c)) for c in completions]


@REWARD_FNS.register("toolcall/correct")
def correct_reward(prompts, completions, **columns) -> list[float | None]:
  """(name match) * (1 + Jaccard(keys) + share of exact values) / 3; column 'answer'."""
  del prompts
  answers = get_column(columns, "answer", len(completions), "toolcall/correct")
  return [None if a is None else correct_reward_one(completion_text(c), _answer(a))
          for c, a in zip(completions, answers)]


@TASKS.register("toolcall")
class ToolCallTask(Task):
  """Single function calls from requests in words; rewards format + correct."""

  name = "toolcall"
  default_rewards = {"toolcall/format": 1.0, "toolcall/correct": 1.0}
  corrupt_kinds = ("format", "value", "missing_arg", "name")

  def __init__(self, num_tools: tuple[int, int] = (2, 3)):
    self.num_tools = num_tools

  def sample_problem(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
    name = rng.choice(sorted(TOOLS))
    params, templates = TOOLS[name]
    args = {k: rng.choice(domain) for k, _, domain in params}
    words = {k: rng.choice(_WORDS_OF[k][v]) if k in _WORDS_OF else v
             for k, v in args.items()}
    request = rng.choice(templates).format(**words)
    k = rng.randint(*self.num_tools)
    others = rng.sample([t for t in sorted(TOOLS) if t != name], k - 1)
    shown = [name] + others
    rng.shuffle(shown)
    prompt = ("Tools: " + "; ".join(spec(t) for t in shown)
              + f"\nUser: {request}\nCall:\n")
    demo = format_call(name, args)
    answer = json.dumps({"name": name, "args": args}, separators=(",", ":"))
    return answer, {"prompt": prompt, "demo": demo, "answer": answer}

  def corrupt(self, demo: str, rng: Any, rate: float,
              row: dict[str, Any] | None = None) -> str:
    """With prob. `rate`: a format error, a wrong value, a missing arg or a wrong tool.

    Each kind lowers toolcall/format (format) or toolcall/correct (the others)
    of a correct demo.
    """
    del row
    rng = as_random(rng)
    if rng.random() >= rate:
      return demo
    obj = _lenient_parse(demo)
    kind = rng.choice(self.corrupt_kinds)
    if obj is None or obj.get("name") not in TOOLS:
      kind = "format"
    if kind == "format":
      how = rng.randrange(4)
      if how == 0:
        return demo[:-len(CLOSE)] if demo.endswith(CLOSE) else demo + "}"
      if how == 1:
        return demo.replace(OPEN, rng.choice(["<cal>", "call>", "<call "]), 1)
      if how == 2 and '"' in demo:
        quotes = [i for i, ch in enumerate(demo) if ch == '"']
        i = rng.choice(quotes)
        return demo[:i] + demo[i + 1:]
      i = demo.rfind("}")
      return demo[:i] + demo[i + 1:]
    name, args = obj["name"], dict(obj["args"])
    if kind == "name":
      name = rng.choice([t for t in sorted(TOOLS) if t != name])
    elif kind == "missing_arg":
      del args[rng.choice(sorted(args))]
    else:  # value
      key = rng.choice(sorted(args))
      domain = dict((k, d) for k, _, d in TOOLS[name][0])[key]
      args[key] = rng.choice([v for v in domain if v != args[key]])
    return format_call(name, args)
