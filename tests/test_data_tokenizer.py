"""Character tokenizer, prompt tokenization and SFT batches (rlx.data)."""

import hypothesis
import hypothesis.strategies as st
from hyp import examples
import numpy as np
import pytest
import transformers

from rlx.data import make_char_tokenizer, make_sft_batch, tokenize_prompts
from rlx.data import tokenizer as tok_lib

PRINTABLE = "".join(chr(i) for i in range(32, 127)) + "\n\t"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  out = tmp_path_factory.mktemp("char_tok")
  tok = make_char_tokenizer(out, extra_chars="é→")
  return out, tok


@pytest.fixture(scope="module")
def tok(saved):
  return saved[1]


def test_fixed_ids(tok):
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
  assert len(tok) == 4 + 2 + 95 + 2
  assert tok("a b\n\t~", add_special_tokens=False)["input_ids"] == [71, 6, 72, 5, 4, 100]
  assert tok("hi")["input_ids"] == [1, 78, 79]  # <bos> prepended
  assert tok("é→", add_special_tokens=False)["input_ids"] == [101, 102]
  assert tok("\x07", add_special_tokens=False)["input_ids"] == [3]  # not in vocab
  assert tok_lib.char_vocab("é→") == tok.get_vocab()


@hypothesis.settings(max_examples=examples(200))
@hypothesis.given(st.text(alphabet=PRINTABLE + "é", max_size=80))
def test_round_trip(tok, s):
  ids = tok(s, add_special_tokens=False)["input_ids"]
  assert len(ids) == len(s)  # one token per character
  assert tok.decode(ids) == s
  assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s


def test_auto_tokenizer_loads_saved_dir(saved):
  out, tok = saved
  assert (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists()
  auto = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
  assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id) == (0, 1, 2)
  assert auto.padding_side == "left"
  rng = np.random.default_rng(0)
  for _ in range(20):
    s = "".join(rng.choice(list(PRINTABLE), size=rng.integers(0, 60)))
    assert auto(s)["input_ids"] == tok(s)["input_ids"]
    assert auto.decode(auto(s, add_special_tokens=False)["input_ids"]) == s
  # Same ids from a fresh build (stable across processes / runs).
  again = make_char_tokenizer(None, extra_chars="é→")
  assert again.get_vocab() == auto.get_vocab()
  text = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                  add_generation_prompt=True)
  assert text == "<bos>user: hi\nassistant: "


def test_extra_chars_must_be_single():
  with pytest.raises(ValueError, match="single characters"):
    tok_lib.char_vocab(["ab"])


def test_tokenize_prompts_left_pads(tok):
  tokens, mask = tokenize_prompts(tok, ["ab", "hello", ""], 8)
  np.testing.assert_array_equal(tokens, [[0, 0, 0, 0, 0, 1, 71, 72],
                                         [0, 0, 1, 78, 75, 82, 82, 85],
                                         [0, 0, 0, 0, 0, 0, 0, 1]])
  np.testing.assert_array_equal(mask, tokens != 0)
  assert tokens.dtype == np.int32 and mask.dtype == bool
  tokens, mask = tokenize_prompts(tok, ["ab", "abc"], 8, buckets=(2, 4, 6))
  assert tokens.shape == (2, 4)
  np.testing.assert_array_equal(tokens, [[0, 1, 71, 72], [1, 71, 72, 73]])


def test_tokenize_prompts_too_long(tok):
  with pytest.raises(ValueError, match="max_prompt_len=4"):
    tokenize_prompts(tok, ["ok", "abcdefgh"], 4)
  tokens, mask = tokenize_prompts(tok, ["ok", "abcdefgh"], 4, truncate=True)
  np.testing.assert_array_equal(tokens[1], tok("efgh", add_special_tokens=False)["input_ids"])
  assert mask.all(axis=1)[1] and mask[0].sum() == 3


def test_make_sft_batch(tok):
  b = make_sft_batch(tok, ["ab", "hello"], ["x", "yz"], 10)
  np.testing.assert_array_equal(b["tokens_BT"], [[0, 0, 0, 0, 0, 1, 71, 72, 94, 2],
                                                 [0, 1, 78, 75, 82, 82, 85, 95, 96, 2]])
  np.testing.assert_array_equal(b["mask_BT"], b["tokens_BT"] != 0)
  np.testing.assert_array_equal(b["loss_mask_BT"].astype(int),
                                [[0] * 8 + [1, 1], [0] * 7 + [1, 1, 1]])
  # Completion tokens + eos under the loss mask decode to the completion.
  for i, c in enumerate(["x", "yz"]):
    ids = b["tokens_BT"][i][b["loss_mask_BT"][i]]
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == c
  with pytest.raises(ValueError, match="max_len=6"):
    make_sft_batch(tok, ["hello"], ["yz"], 6)
  t = make_sft_batch(tok, ["hello"], ["yz"], 6, truncate=True)
  np.testing.assert_array_equal(t["tokens_BT"], [[82, 82, 85, 95, 96, 2]])
  np.testing.assert_array_equal(t["loss_mask_BT"], [[0, 0, 0, 1, 1, 1]])
  t = make_sft_batch(tok, ["hello"], ["abcdefgh"], 6, truncate=True)
  np.testing.assert_array_equal(t["tokens_BT"], [[71, 72, 73, 74, 75, 76]])
  assert t["loss_mask_BT"].all()
