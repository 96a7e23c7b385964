"""Character-level tokenizer for the tiny models that rlx trains from scratch.

Ids are fixed: <pad>=0, <bos>=1, <eos>=2, <unk>=3, '\\t'=4, '\\n'=5, then the
95 printable ASCII characters ' ' .. '~' in code-point order (ids 6..100), then
`extra_chars` in the order given. Encoding with special tokens prepends <bos>;
decoding concatenates characters, so decode(encode(s)) == s for any text made
of vocabulary characters (characters outside it become <unk>).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
BASE_CHARS = ("\t", "\n") + tuple(chr(i) for i in range(32, 127))

# Plain concatenation of message contents; `role: content` per line.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")


def char_vocab(extra_chars: Iterable[str] = ()) -> dict[str, int]:
  """The token -> id map of the character tokenizer (stable across runs)."""
  vocab: dict[str, int] = {}
  for tok in (*SPECIAL_TOKENS, *BASE_CHARS, *extra_chars):
    if len(tok) != 1 and tok not in SPECIAL_TOKENS:
      raise ValueError(f"extra_chars must be single characters, got {tok!r}.")
    if tok not in vocab:
      vocab[tok] = len(vocab)
  return vocab


def make_char_tokenizer(out_dir: str | os.PathLike[str] | None = None, *,
                        extra_chars: Iterable[str] = (),
                        chat_template: str | None = CHAT_TEMPLATE) -> Any:
  """Builds the character tokenizer; saves it in HF layout when `out_dir` is set.

  Args:
    out_dir: folder for tokenizer.json + tokenizer_config.json (loadable with
      `transformers.AutoTokenizer.from_pretrained(out_dir)` offline), or None.
    extra_chars: characters appended to the vocabulary after printable ASCII.
    chat_template: Jinja chat template stored with the tokenizer (None: none).

  Returns:
    A `transformers.PreTrainedTokenizerFast` (left padding, no space cleanup).
  """
  # pylint: disable=g-import-not-at-top
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, processors
  import transformers
  # pylint: enable=g-import-not-at-top

  vocab = char_vocab(extra_chars)
  tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  # One piece per code point (newlines included), no normalization.
  tok.pre_tokenizer = pre_tokenizers.Split(
      tokenizers.Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t in SPECIAL_TOKENS])
  tok.post_processor = processors.TemplateProcessing(
      single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)])
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
      pad_token="<pad>", unk_token="<unk>",
      clean_up_tokenization_spaces=False, padding_side="left")
  if chat_template is not None:
    hf.chat_template = chat_template
  if out_dir is not None:
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(os.fspath(out_dir))
  return hf
