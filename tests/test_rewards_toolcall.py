"""ToolRL format and correctness rewards on hand-labelled cases.

Expected correctness values are worked out by hand from ToolRL's formula
R = 6 * S / S_max - 3 (see rlx/rewards/toolcall.py), with the arithmetic in
the comments.
"""
import json

import pytest
from hypothesis import given, settings, strategies as st
from hyp import examples

from rlx.rewards import REWARD_FNS
from rlx.rewards import toolcall


def call(name, **params):
  return {"name": name, "parameters": params}


def block(*calls, raw=None):
  body = raw if raw is not None else "\n".join(json.dumps(c) for c in calls)
  return f"<tool_call>\n{body}\n</tool_call>"


def resp(*calls, raw=None, think="reasoning"):
  return f"<think>{think}</think>\n" + block(*calls, raw=raw)


W = call("get_weather", city="Paris", unit="C")  # S_max = 1 + (1 + 2) = 4
G1 = block(W)
S, T = call("search", q="cats"), call("translate", text="hi", lang="fr")  # S_max = 6
G2 = block(S, T)
E = call("get_time")  # S_max = 1 + 1 = 2
G3 = block(E)

CORRECTNESS = [
    # gold, completion, expected
    (G1, resp(W), 3.0),  # exact
    (G1, resp(call("get_weather", unit="C", city="Paris")), 3.0),  # key order irrelevant
    (G1, resp(call("get_weather", city="Paris", unit="F")), 1.5),  # S=1+1+1=3: 6*3/4-3
    (G1, resp(call("get_weather", city="Paris", unit="c")), 1.5),  # values compare exactly
    (G1, resp(call("get_weather", city="Paris")), 0.75),  # S=1+0.5+1=2.5
    (G1, resp(call("get_forecast", city="Paris", unit="C")), -3.0),  # S=0
    (G1, resp(call("get_weather", city="Paris", unit="C", days=3)), 2.5),  # S=1+2/3+2
    (G1, resp(W, W), 2.25),  # names 1/2, best 3: S=3.5
    (G1, resp(call("get_weather", city="Lyon", unit="C")), 1.5),  # S=1+1+1
    # keys [city, unit] vs [town, unit]: 1/(2+2-1); value unit: S=1+1/3+1 -> 0.5
    (G1, resp(call("get_weather", town="Paris", unit="C")), 0.5),
    (G1, "<think>x</think>\nno call at all", -3.0),
    (G1, resp(raw='{"name": "get_weather", "parameters": {"city": "Paris"'), -3.0),  # bad JSON
    (G1, resp(raw='{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}'),
     -3.0),  # missing "parameters"
    (G1, resp(raw=json.dumps([W])), -3.0),  # a JSON list, not an object
    (G1, resp(raw='"get_weather"'), -3.0),  # a JSON string
    (G1, resp(raw=json.dumps(W) + "\n\n" + json.dumps(W)), -3.0),  # blank line inside
    (G1, "<tool_call>\n" + json.dumps(W) + "\n</tool_call>", 3.0),  # format is not checked here
    (G1, "text before " + block(W) + " text after", 3.0),
    (G1, resp(call("get_weather", city=["Paris"], unit="C")), 1.5),  # S=1+1+1
    (G2, resp(S, T), 3.0),
    (G2, resp(T, S), 3.0),  # names 1; search 1+1; translate 1+2: S=6
    (G2, resp(S), -0.5),  # names 1/2, search 2: S=2.5
    (G2, resp(S, call("translate", text="hi", lang="de")), 2.0),  # S=1+2+2
    (G2, resp(S, T, call("search", q="dogs")), 2.0 + 2.0 / 3.0),  # names 2/3: S=2/3+2+3
    (G2, resp(call("search", q="dogs")), -1.5),  # names 1/2, search 1+0: S=1.5
    (G2, resp(call("translate", text="hi")), -1.0),  # names 1/2; keys 1/2 + 1: S=2
    (G3, resp(E), 3.0),
    (G3, resp(call("get_time", tz="UTC")), 0.0),  # names 1; params score 0 -> unmatched
    (G3, resp(call("get_date")), -3.0),
    ("<think>t</think>\n<response>Hello</response>", resp(W), 0.0),  # gold without calls
    ("<think>t</think>\n<response>Hello</response>", "anything", 0.0),
]
FORMAT = [
    # gold, completion, expected
    (G1, resp(W), 1.0),
    (G1, block(W), 0.0),  # no <think>
    (G1, "<think>x</think>\n<tool_call>" + json.dumps(W) + "\n</tool_call>", 0.0),
    (G1, resp(W) + "\nDone.", 0.0),  # text after the block
    (G1, resp(W) + "\n" + block(W), 0.0),  # two blocks
    (G1, "\n  " + resp(W) + "\n", 1.0),  # surrounding whitespace is stripped
    (G1, "<think></think>\n<tool_call>\n\n</tool_call>", 1.0),  # empty but well-formed
    (G1, "<think>x</think> " + block(W), 0.0),  # space instead of newline
    (G1, "<think>x</think>\n<response>sunny</response>", 0.0),
    ("<think>t</think>\n<response>hi</response>",
     "<think>a</think>\n<response>Hello!</response>", 1.0),
    ("<think>t</think>\n<response>hi</response>", resp(W), 0.0),
    ("<think>t</think>\n<response>hi</response>",
     "<think>a</think>\n<response>a</response><response>b</response>", 0.0),
    (G1 + "\n<response>ok</response>", resp(W) + "\n<response>Calling.</response>", 1.0),
    (G1 + "\n<response>ok</response>", resp(W), 0.0),
    ("<think>only</think>", "<think>fine</think>", 1.0),
    ("<think>only</think>", "<think>a</think>\n<response>b</response>", 0.0),
]


def test_correctness_hand_labelled():
  assert len(CORRECTNESS) >= 30
  fn = REWARD_FNS.get("toolrl_correctness")
  got = fn([""] * len(CORRECTNESS), [c for _, c, _ in CORRECTNESS],
           answer=[g for g, _, _ in CORRECTNESS])
  for (g, c, want), r in zip(CORRECTNESS, got):
    assert r == pytest.approx(want, abs=1e-9), (g, c)


def test_format_hand_labelled():
  fn = REWARD_FNS.get("toolrl_format")
  got = fn([""] * len(FORMAT), [c for _, c, _ in FORMAT], answer=[g for g, _, _ in FORMAT])
  assert got == [w for _, _, w in FORMAT]


def test_chat_messages_and_gold_as_call_list():
  fn = REWARD_FNS.get("toolrl_correctness")
  comps = [[{"role": "assistant", "content": resp(W)}],
           [{"role": "assistant", "content": resp(call("get_weather", city="Paris"))}]]
  assert fn(["", ""], comps, ground_truth=[[W], [W]]) == [3.0, 0.75]
  assert REWARD_FNS.get("toolrl_format")(["", ""], comps, ground_truth=[[W], [W]]) == [1.0, 1.0]
  # Malformed gold is a data error: a missing reward, not a crash.
  assert fn([""], [resp(W)], answer=["<tool_call>\n{oops\n</tool_call>"]) == [None]
  # Scaled range (ToolRL's CORRECTMAX1 variant).
  f1 = toolcall.make_toolrl_correctness_reward(r_max=1.0, r_min=-1.0)
  assert f1([""], [resp(call("get_weather", city="Paris"))], answer=[G1]) == [0.25]


def test_match_score():
  assert toolcall.match_score(["a", "b"], ["b", "a"]) == 1.0
  assert toolcall.match_score(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 4)
  assert toolcall.match_score([], []) == 1.0
  assert toolcall.match_score([], ["a"]) == 0.0


names = st.sampled_from(["f", "g", "h"])
params = st.dictionaries(st.sampled_from(["x", "y", "z"]), st.integers(0, 2), max_size=3)
calls = st.lists(st.builds(lambda n, p: {"name": n, "parameters": p}, names, params),
                 min_size=1, max_size=3)


@settings(max_examples=examples(200))
@given(calls, calls)
def test_score_range_and_exact_match(gold, pred):
  r = toolcall.tool_call_score(gold, pred)
  assert -3.0 - 1e-9 <= r <= 3.0 + 1e-9
  assert toolcall.tool_call_score(gold, gold) == 3.0
  # More correct parameter values never lower the score of a single call.
  if len(gold) == 1 and len(pred) == 1 and pred[0]["name"] == gold[0]["name"]:
    fixed = {"name": gold[0]["name"], "parameters": dict(gold[0]["parameters"])}
    assert toolcall.tool_call_score(gold, [fixed]) >= r
