"""Try a model: sample completions of one prompt from a Hugging Face checkpoint dir.

    python -m rlx.sample --checkpoint DIR --prompt "2 + 2 =" --num_samples 4 \
        --temperature 0.7 --max_new_tokens 64 [--top_k 50 --top_p 0.9 --min_p 0 \
        --greedy --chat --seed 0 --dtype bfloat16]

Stops at the tokenizer's / config's end-of-sequence tokens. --chat wraps the
prompt in the tokenizer's chat template as a user message.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m rlx.sample", description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", required=True, help="HF checkpoint directory (with tokenizer).")
  ap.add_argument("--prompt", required=True)
  ap.add_argument("--num_samples", type=int, default=1, help="completions (group size G).")
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--top_k", type=int, default=0, help="0: off.")
  ap.add_argument("--top_p", type=float, default=1.0, help="1: off.")
  ap.add_argument("--min_p", type=float, default=0.0, help="0: off.")
  ap.add_argument("--greedy", action="store_true", help="argmax decoding.")
  ap.add_argument("--chat", action="store_true", help="apply the chat template.")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--dtype", default=None, help="compute dtype (default: checkpoint's).")
  return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[str]:
  """Runs the CLI; prints and returns the completions."""
  from rlx import models
  from rlx.sampling import SamplingSettings, decode_completions, pad_prompts, sample

  args = parse_args(argv)
  cfg, graphdef, params = models.load_hf(args.checkpoint, dtype=args.dtype)
  tok = models.load_tokenizer(args.checkpoint)
  if args.chat:
    ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}],
                                  add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
      ids = ids["input_ids"]
  else:
    ids = tok.encode(args.prompt, add_special_tokens=False)
  ids = [int(i) for i in ids]
  if not ids:
    raise SystemExit("--prompt encodes to no tokens.")
  stops = set(cfg.eos_token_ids)
  if tok.eos_token_id is not None:
    stops.add(int(tok.eos_token_id))
  pad = tok.pad_token_id if tok.pad_token_id is not None else (
      cfg.pad_token_id if cfg.pad_token_id is not None else 0)
  settings = SamplingSettings(
      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
      top_p=args.top_p, min_p=args.min_p, greedy=args.greedy,
      stop_token_ids=tuple(sorted(stops)), group_size=args.num_samples, pad_token_id=int(pad))
  tokens_BP, mask_BP = pad_prompts([ids], pad_token_id=int(pad))
  t0 = time.perf_counter()
  rollout = sample(graphdef, params, jnp.asarray(tokens_BP), jnp.asarray(mask_BP),
                   jax.random.key(args.seed), settings)
  jax.block_until_ready(rollout)
  dt = time.perf_counter() - t0
  texts = decode_completions(tok, rollout)
  for i, text in enumerate(texts):
    n, trunc = int(rollout.completion_lengths[i]), bool(rollout.truncated[i])
    print(f"--- sample {i} ({n} tokens{', truncated' if trunc else ''})")
    print(text)
  print(f"--- {sum(int(x) for x in rollout.completion_lengths)} tokens in {dt:.2f} s "
        "(compilation included)", file=sys.stderr)
  return texts


if __name__ == "__main__":
  main()
