"""Rule-based rewards with the TRL signature.

Every reward here is `fn(prompts, completions, **columns) -> list[float | None]`.
`completions` are strings or chat-message lists as TRL passes them
(`[{"role": "assistant", "content": ...}]`); `columns` are the dataset's other
fields, lists aligned with `prompts`. Options are keyword-only arguments, so a
configured variant is `functools.partial(fn, option=...)`; the `make_*`
factories do exactly that and give the result a `__name__` for logging.
"""
from __future__ import annotations

import functools
import re
import string
from typing import Any, Callable, Sequence

from rlx.rewards.registry import PAIRWISE_FNS, REWARD_FNS

RewardFn = Callable[..., list]


def completion_text(completion: Any) -> str:
  """Text of one completion, the one rule for every reward: a string as is; a
  message dict its content; a chat completion (a list of messages, as TRL
  passes conversational completions) the contents of its assistant messages
  (a message without a role counts as one) joined in order, so tool and user
  turns inside a completion are never scored; None gives ''."""
  if completion is None:
    return ""
  if isinstance(completion, str):
    return completion
  if isinstance(completion, dict):
    return str(completion.get("content") or "")
  if isinstance(completion, Sequence):
    parts = [m.get("content") or "" for m in completion
             if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    return "".join(str(p) for p in parts)
  return str(completion)


def completion_texts(completions: Sequence[Any]) -> list[str]:
  return [completion_text(c) for c in completions]


def named_partial(fn: Callable[..., Any], name: str, **kwargs: Any) -> Callable[..., Any]:
  """functools.partial(fn, **kwargs) with a `__name__` (TRL logs rewards by name)."""
  p = functools.partial(fn, **kwargs)
  p.__name__ = name  # type: ignore[attr-defined]
  p.__doc__ = fn.__doc__
  return p


def get_column(columns: dict[str, Any], names: str | Sequence[str], n: int,
               fn_name: str) -> list[Any]:
  """The dataset column of a reward call: the first present (not None) one
  among `names`, checked to hold one value per completion (KeyError naming the
  available columns if none is present)."""
  names = [names] if isinstance(names, str) else list(names)
  for name in names:
    if name in columns and columns[name] is not None:
      col = list(columns[name])
      if len(col) != n:
        raise ValueError(f"{fn_name}: column {name!r} has {len(col)} rows, "
                         f"completions have {n}.")
      return col
  raise KeyError(f"{fn_name} needs one of the dataset columns {names}; "
                 f"available columns: {sorted(columns)}.")


# ----------------------------------------------------------------------------
# Format.
# ----------------------------------------------------------------------------
def tags_pattern(tags: Sequence[str]) -> str:
  """Regex for `<t1>...</t1> <t2>...</t2> ...` (whitespace between, nothing else)."""
  body = r"\s*".join(rf"<{re.escape(t)}>.*?</{re.escape(t)}>" for t in tags)
  return rf"\s*{body}\s*"


@REWARD_FNS.register("format")
def format_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                  pattern: str | None = None,
                  tags: Sequence[str] = ("think", "answer"),
                  **columns: Any) -> list[float]:
  """1.0 if the completion matches the format, else 0.0.

  With `pattern`: `re.fullmatch(pattern, text, re.DOTALL)`. Otherwise the text
  must be exactly the `tags` blocks in order, separated only by whitespace,
  each tag opened and closed exactly once.
  """
  del prompts, columns
  regex = re.compile(pattern if pattern is not None else tags_pattern(tags), re.DOTALL)
  out = []
  for text in completion_texts(completions):
    ok = regex.fullmatch(text) is not None
    if ok and pattern is None:
      ok = all(text.count(f"<{t}>") == 1 and text.count(f"</{t}>") == 1 for t in tags)
    out.append(1.0 if ok else 0.0)
  return out


def make_format_reward(*, pattern: str | None = None,
                       tags: Sequence[str] = ("think", "answer"),
                       name: str = "format") -> RewardFn:
  """Format reward with a fixed regex or tag sequence."""
  return named_partial(format_reward, name, pattern=pattern, tags=tuple(tags))


# ----------------------------------------------------------------------------
# Exact match.
# ----------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
  """SQuAD normalization: lower case, drop punctuation and articles, squeeze spaces."""
  s = str(s).lower().translate(_PUNCT)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def extract_tag(text: str, tag: str) -> str | None:
  """Content of the last `<tag>...</tag>` block, None if there is none."""
  found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL)
  return found[-1].strip() if found else None


@REWARD_FNS.register("exact_match")
def exact_match_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                       answer_column: str | Sequence[str] = ("answer", "solution"),
                       tag: str | None = "answer", normalize: bool = True,
                       **columns: Any) -> list[float | None]:
  """1.0 if the extracted answer equals the gold answer, else 0.0.

  The answer is the last `<tag>...</tag>` block if `tag` is set and present,
  else the whole (stripped) completion. Comparison after `normalize_answer`
  when `normalize`, else of stripped strings. A missing gold answer (None)
  gives None.
  """
  del prompts
  texts = completion_texts(completions)
  gold = get_column(columns, answer_column, len(texts), "exact_match")
  out: list[float | None] = []
  for text, g in zip(texts, gold):
    if g is None:
      out.append(None)
      continue
    pred = extract_tag(text, tag) if tag else None
    pred = text.strip() if pred is None else pred
    if normalize:
      ok = normalize_answer(pred) == normalize_answer(g)
    else:
      ok = pred.strip() == str(g).strip()
    out.append(1.0 if ok else 0.0)
  return out


# ----------------------------------------------------------------------------
# Length.
# ----------------------------------------------------------------------------
def _lengths(completions: Sequence[Any], columns: dict[str, Any],
             length_column: str | None, fn_name: str) -> list[float]:
  if length_column is not None:
    return [float(x) for x in get_column(columns, length_column, len(completions), fn_name)]
  return [float(len(t)) for t in completion_texts(completions)]


def dapo_overlong_penalty(length: float, max_length: float, cache_length: float) -> float:
  """DAPO soft overlong penalty (docs/methods.md section 2).

  0 if L <= Lmax - C;  ((Lmax - C) - L) / C if Lmax - C < L <= Lmax;  -1 beyond.
  """
  if cache_length <= 0:
    return 0.0 if length <= max_length else -1.0
  start = max_length - cache_length
  if length <= start:
    return 0.0
  if length <= max_length:
    return (start - length) / cache_length
  return -1.0


@REWARD_FNS.register("overlong_penalty")
def overlong_penalty_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                            max_length: float = 4096, cache_length: float = 512,
                            length_column: str | None = None,
                            **columns: Any) -> list[float]:
  """DAPO soft overlong penalty in [-1, 0].

  Lengths come from `length_column` (e.g. token counts the trainer adds) or,
  when it is None, are character counts of the completion text.
  """
  del prompts
  if cache_length > max_length:
    raise ValueError(f"overlong_penalty: cache_length={cache_length} exceeds "
                     f"max_length={max_length}.")
  lengths = _lengths(completions, columns, length_column, "overlong_penalty")
  return [dapo_overlong_penalty(l, max_length, cache_length) for l in lengths]


def make_overlong_penalty(*, max_length: float, cache_length: float,
                          length_column: str | None = None,
                          name: str = "overlong_penalty") -> RewardFn:
  return named_partial(overlong_penalty_reward, name, max_length=max_length,
                       cache_length=cache_length, length_column=length_column)


@REWARD_FNS.register("length_limit")
def length_limit_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                        max_length: float = 4096, length_column: str | None = None,
                        **columns: Any) -> list[float]:
  """1.0 if the length is at most `max_length`, else 0.0 (GDPO's length reward).

  Lengths as in `overlong_penalty_reward` (column of token counts, or characters).
  """
  del prompts
  lengths = _lengths(completions, columns, length_column, "length_limit")
  return [1.0 if l <= max_length else 0.0 for l in lengths]


@PAIRWISE_FNS.register("shorter")
def shorter_pairwise(prompt: Any, completion_a: Any, completion_b: Any) -> float:
  """P(a beats b) of a length preference: 1 if a is shorter, 0 if longer, 0.5 if equal."""
  del prompt
  a, b = len(completion_text(completion_a)), len(completion_text(completion_b))
  return 1.0 if a < b else 0.0 if a > b else 0.5


def make_length_limit(*, max_length: float, length_column: str | None = None,
                      name: str = "length_limit") -> RewardFn:
  return named_partial(length_limit_reward, name, max_length=max_length,
                       length_column=length_column)


# ----------------------------------------------------------------------------
# Conditioned reward.
# ----------------------------------------------------------------------------
def make_conditioned_reward(reward_fn: RewardFn, condition_fn: RewardFn,
                            threshold: float = 1.0, *,
                            name: str | None = None) -> RewardFn:
  """r_k counts only where r_l >= t (GDPO Eq. 8): r_k if r_l >= t else 0.

  Both functions are called with the same arguments. A missing r_k (None)
  stays None; a missing r_l counts as the condition not being met (0.0).
  """

  def conditioned(prompts, completions, **columns):
    rk = reward_fn(prompts, completions, **columns)
    rl = condition_fn(prompts, completions, **columns)
    if len(rk) != len(rl):
      raise ValueError(f"conditioned reward: {len(rk)} vs {len(rl)} rewards.")
    out = []
    for k, l in zip(rk, rl):
      if k is None:
        out.append(None)
      else:
        out.append(float(k) if (l is not None and l >= threshold) else 0.0)
    return out

  conditioned.__name__ = name or (
      f"{getattr(reward_fn, '__name__', 'reward')}_if_"
      f"{getattr(condition_fn, '__name__', 'condition')}")
  return conditioned
