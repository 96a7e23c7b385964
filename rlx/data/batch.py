"""Token batches with static shapes: left-padded prompts and SFT examples.

Left padding puts every prompt's last token at the same column, which is what
the KV-cache sampler extends. Masks mark real tokens; positions follow from
`rlx.models.positions_from_mask(mask)`.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _pad_id(tokenizer: Any) -> int:
  for name in ("pad_token_id", "eos_token_id"):
    value = getattr(tokenizer, name, None)
    if value is not None:
      return int(value)
  return 0


def is_chat(prompt: Any) -> bool:
  """True for a conversational prompt: a list of {'role', 'content'} messages."""
  return isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt)


def _chat_ids(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
  """Token ids of `messages` through the tokenizer's chat template, with the
  assistant generation prompt, as `apply_chat_template(..., tokenize=True)`."""
  ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
  if hasattr(ids, "keys"):
    ids = ids["input_ids"]
  return [int(i) for i in ids]


def encode_prompts(tokenizer: Any, texts: Sequence[Any],
                   add_special_tokens: bool) -> list[list[int]]:
  """Ids of each prompt: a string (tokenized as is) or chat messages (templated)."""
  if not texts:
    return []
  strings = [i for i, t in enumerate(texts) if not is_chat(t)]
  out: list[list[int]] = [[] for _ in texts]
  if strings:
    enc = tokenizer([texts[i] for i in strings], add_special_tokens=add_special_tokens)
    for i, ids in zip(strings, enc["input_ids"]):
      out[i] = list(ids)
  for i, t in enumerate(texts):
    if is_chat(t):
      out[i] = _chat_ids(tokenizer, t)
  return out


def left_pad(seqs: Sequence[Sequence[int]], length: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[B, length] int32 tokens (right-aligned) and bool mask; seqs must fit."""
  tokens = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), bool)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f"Sequence {i} has {len(s)} tokens > {length}.")
    if s:
      tokens[i, length - len(s):] = s
      mask[i, length - len(s):] = True
  return tokens, mask


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; ValueError if none."""
  for b in sorted(buckets):
    if b >= n:
      return int(b)
  raise ValueError(f"Length {n} exceeds the largest bucket {max(buckets)}.")


def tokenize_prompts(tokenizer: Any, prompts: Sequence[Any], max_prompt_len: int, *,
                     truncate: bool = False, add_special_tokens: bool = True,
                     buckets: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes and left-pads prompts to a static length.

  Args:
    tokenizer: a HF tokenizer (pad_token_id, else eos_token_id, pads).
    prompts: B strings, or chat message lists (TRL's conversational format:
      [{'role': 'system' | 'user' | ..., 'content': str}, ...]), which go
      through the tokenizer's chat template with the generation prompt.
    max_prompt_len: P, the padded length (and the limit).
    truncate: if False, a prompt longer than P raises ValueError; if True, it
      keeps its last P tokens (truncation from the left) and a warning is logged.
    add_special_tokens: e.g. the tokenizer's <bos> (string prompts only; the
      chat template writes its own special tokens).
    buckets: if given, P is the smallest bucket >= the longest prompt
      (capped at max_prompt_len), so few distinct shapes reach jit.

  Returns:
    tokens_BP int32, mask_BP bool.
  """
  seqs = encode_prompts(tokenizer, prompts, add_special_tokens)
  too_long = [i for i, s in enumerate(seqs) if len(s) > max_prompt_len]
  if too_long:
    i = too_long[0]
    if not truncate:
      raise ValueError(
          f"{len(too_long)} prompt(s) exceed max_prompt_len={max_prompt_len} tokens "
          f"(prompt {i} has {len(seqs[i])}: {str(prompts[i])[:60]!r}...). Raise "
          f"max_prompt_len or pass truncate=True to keep the last tokens.")
    logger.warning("Truncating %d prompt(s) from the left to %d tokens.", len(too_long),
                   max_prompt_len)
    seqs = [s[len(s) - max_prompt_len:] if len(s) > max_prompt_len else s for s in seqs]
  length = max_prompt_len
  if buckets:
    longest = max((len(s) for s in seqs), default=0)
    length = min(bucket_length(longest, list(buckets) + [max_prompt_len]), max_prompt_len)
  return left_pad(seqs, length, _pad_id(tokenizer))


def make_sft_batch(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                   max_len: int, *, truncate: bool = False,
                   add_special_tokens: bool = True) -> dict[str, np.ndarray]:
  """Left-padded prompt+completion+<eos> rows for supervised fine-tuning.

  Args:
    tokenizer: HF tokenizer with an eos token.
    prompts, completions: B strings each; the completion tokens follow the
      prompt tokens directly (tokenized separately, so ids match sampling).
    max_len: T, the padded length.
    truncate: if False, a row longer than T raises ValueError; if True, the
      prompt loses tokens from the left first, then the completion from the
      right (losing <eos>).
    add_special_tokens: special tokens on the prompt (e.g. <bos>).

  Returns:
    dict(tokens_BT int32, mask_BT bool (all real tokens),
         loss_mask_BT bool (completion tokens and <eos> only)).
  """
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
  eos = getattr(tokenizer, "eos_token_id", None)
  if eos is None:
    raise ValueError("make_sft_batch needs a tokenizer with an eos token.")
  p_seqs = encode_prompts(tokenizer, prompts, add_special_tokens)
  c_seqs = [s + [int(eos)] for s in encode_prompts(tokenizer, completions, False)]
  rows, loss = [], []
  for i, (p, c) in enumerate(zip(p_seqs, c_seqs)):
    if len(p) + len(c) > max_len:
      if not truncate:
        raise ValueError(
            f"SFT row {i} has {len(p)} prompt + {len(c)} completion tokens > "
            f"max_len={max_len}. Raise max_len or pass truncate=True.")
      c = c[:max_len]
      p = p[len(p) - (max_len - len(c)):] if max_len > len(c) else []
    rows.append(p + c)
    loss.append([False] * len(p) + [True] * len(c))
  tokens, mask = left_pad(rows, max_len, _pad_id(tokenizer))
  loss_mask = np.zeros_like(mask)
  for i, l in enumerate(loss):
    if l:
      loss_mask[i, max_len - len(l):] = l
  return {"tokens_BT": tokens, "mask_BT": mask, "loss_mask_BT": loss_mask}
