"""Tasks on real benchmark data: BFCL, HumanEval, reasoning-gym (no model needed)."""
import copy
import importlib.util
import json
import sys
import types

import pytest

from rlx.data.tasks import get_task
from rlx.data.tasks import bfcl
from rlx.data.tasks.dataset import package_dir
from rlx.rewards.registry import REWARD_FNS


def _bfcl_checker():
  """bfcl-eval's own AST checker. Its module imports the model registry (and
  through it the API clients, not installed); the checker only reads
  MODEL_CONFIG_MAPPING[model].underscore_to_dot, so that one module is stubbed."""
  stub = types.ModuleType("bfcl_eval.constants.model_config")
  stub.MODEL_CONFIG_MAPPING = {"rlx": types.SimpleNamespace(underscore_to_dot=False)}
  saved = sys.modules.get(stub.__name__)
  sys.modules[stub.__name__] = stub
  try:
    from bfcl_eval.constants.enums import Language
    spec = importlib.util.spec_from_file_location(
        "rlx_test_bfcl_ast_checker",
        f"{package_dir('bfcl_eval')}/eval_checker/ast_eval/ast_checker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
  finally:
    if saved is None:
      sys.modules.pop(stub.__name__)
    else:
      sys.modules[stub.__name__] = saved
  return lambda fns, out, gold, cat: mod.ast_checker(fns, out, gold, Language.PYTHON, cat,
                                                     "rlx")["valid"]


def _first_answer(gold):
  """The model output {name: args} that takes the first accepted value of each arg."""
  out = []
  for g in gold:
    (name, args), = g.items()
    out.append({name: {k: v[0] for k, v in args.items() if v and v[0] != ""}})
  return out


def _perturbations(out, functions):
  """Model outputs near `out`: a changed value, a missing / unknown argument,
  a wrong name, an extra or missing call, reversed order."""
  docs = {f["name"]: f for f in functions}
  yield out[::-1]
  yield out + out[:1]
  yield out[:-1]
  for i, call in enumerate(out):
    (name, args), = call.items()
    yield out[:i] + [{name + "_x": args}] + out[i + 1:]
    yield out[:i] + [{name: dict(args, unknown_arg=1)}] + out[i + 1:]
    for k, v in args.items():
      yield out[:i] + [{name: {a: b for a, b in args.items() if a != k}}] + out[i + 1:]
      if isinstance(v, bool):
        new = not v
      elif isinstance(v, (int, float)):
        new = v + 1
      elif isinstance(v, str):
        new = v + " x"
      elif isinstance(v, list):
        new = v[1:] if v else [1]
      else:
        new = str(v)
      yield out[:i] + [{name: dict(args, **{k: new})}] + out[i + 1:]
      yield out[:i] + [{name: dict(args, **{k: str(v)})}] + out[i + 1:]
    for k in docs.get(name, {}).get("parameters", {}).get("properties", {}):
      if k not in args:
        yield out[:i] + [{name: dict(args, **{k: "value"})}] + out[i + 1:]


def _text(out):
  calls = [{"name": n, "arguments": a} for c in out for n, a in c.items()]
  return bfcl.OPEN + json.dumps(calls) + bfcl.CLOSE


def test_bfcl_correct_agrees_with_bfcl_ast_checker():
  """correct == 1 exactly when bfcl-eval's checker accepts: every ground-truth
  answer of the four Python AST categories and ~20 perturbations of each."""
  check = _bfcl_checker()
  task = bfcl.BFCLTask(categories=bfcl.DEFAULT_CATEGORIES)
  rows = [r for _, r in task.problems()]
  assert len(rows) == 1000 and not task.skipped
  n_valid = n_total = 0
  for row in rows:
    fns, gold, cat = json.loads(row["functions"]), json.loads(row["ground_truth"]), row["category"]
    base = _first_answer(gold)
    for out in [base] + list(_perturbations(base, fns)):
      ref = check(fns, copy.deepcopy(out), gold, cat)
      got = bfcl.correct_score(bfcl.parse_calls(_text(out)), fns, gold)
      assert (got == 1.0) == ref, (row["id"], out, got, ref)
      assert 0.0 <= got <= 1.0
      n_valid += ref
      n_total += 1
  assert n_total > 15000 and 1000 <= n_valid < n_total / 2  # both outcomes well covered


def test_bfcl_rewards_graded_and_format():
  fns = [{"name": "f", "parameters": {"type": "dict", "required": ["a"], "properties": {
      "a": {"type": "integer"}, "b": {"type": "string"}}}}]
  gold = [{"f": {"a": [1], "b": ["x", ""]}}, {"f": {"a": [2], "b": [""]}}]
  cols = {"functions": [json.dumps(fns)] * 6, "ground_truth": [json.dumps(gold)] * 6}
  def calls(*cs):
    return bfcl.OPEN + json.dumps([{"name": "f", "arguments": c} for c in cs]) + bfcl.CLOSE
  completions = [
      calls({"a": 2}, {"a": 1, "b": "X"}),       # both right, any order; case ignored
      calls({"a": 1}),                           # one call of two
      "sure! " + calls({"a": 1}, {"a": 2}),      # right calls, text around: format 0
      calls({"a": 1}, {"a": 3}),                 # one wrong value
      "<tool_call>[{\"name\": \"f\"",           # not JSON
      [{"role": "assistant", "content": calls({"a": 1}, {"a": 2, "c": 0})}],  # chat; unknown arg
  ]
  fmt = REWARD_FNS.get("bfcl/format")([None] * 6, completions, **cols)
  cor = REWARD_FNS.get("bfcl/correct")([None] * 6, completions, **cols)
  assert fmt == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
  # S_max = 1 + 3 + 3 = 7. Names: [f, f] vs [f] -> 0.5.
  assert cor == pytest.approx([1.0, (0.5 + 3) / 7, 1.0, (1 + 3 + 2) / 7, 0.0, (1 + 3 + 2) / 7])


def test_bfcl_sft_targets_score_one_with_the_tasks_rewards():
  """Each row's 'demo' (the ground truth in the prompt's call convention, the SFT
  target) gets format = correct = 1 from the registered rewards, on every row of
  every category but the five whose ground truth contradicts the function docs;
  corrupt(rate=1) lowers one of the two rewards."""
  task = bfcl.BFCLTask(categories=bfcl.CATEGORIES)
  rows = [r for _, r in task.problems()]
  assert len(rows) == 2351 and not task.skipped
  cols = {k: [r[k] for r in rows] for k in ("functions", "ground_truth")}
  demos = [r["demo"] for r in rows]
  fmt = REWARD_FNS.get("bfcl/format")([r["prompt"] for r in rows], demos, **cols)
  cor = REWARD_FNS.get("bfcl/correct")([r["prompt"] for r in rows], demos, **cols)
  assert fmt == [1.0] * len(rows)
  assert sorted(r["id"] for r, c in zip(rows, cor) if c != 1.0) == [
      "live_multiple_507-149-4", "live_multiple_862-181-3", "live_multiple_964-207-0",
      "live_simple_106-63-0", "live_simple_112-68-0"]
  bad = [task.corrupt(d, seed, 1.0) for seed, d in enumerate(demos[:200])]
  fmt = REWARD_FNS.get("bfcl/format")([None] * 200, bad, **{k: v[:200] for k, v in cols.items()})
  cor = REWARD_FNS.get("bfcl/correct")([None] * 200, bad, **{k: v[:200] for k, v in cols.items()})
  assert all(f < 1.0 or c < 1.0 for f, c in zip(fmt, cor))
  assert 0 < sum(f == 0.0 for f in fmt) < 200  # both kinds of flaw occur
  assert task.corrupt(demos[0], 0, 0.0) == demos[0]


def test_bfcl_splits_and_messages():
  task = get_task("bfcl", categories=["simple_python", "parallel"], split_seed=3)
  train, test = task.make_examples(0, 10000, "train"), task.make_examples(1, 10000, "test")
  ids_tr, ids_te = {r["id"] for r in train}, {r["id"] for r in test}
  assert not ids_tr & ids_te and len(ids_tr | ids_te) == 600
  assert 0.1 < len(test) / 600 < 0.3
  assert [r["id"] for r in task.make_examples(0, 20, "train")] == [r["id"] for r in train[:20]]
  assert [r["id"] for r in task.make_examples(5, 20, "train")] != [r["id"] for r in train[:20]]
  r = train[0]
  assert [m["role"] for m in r["prompt"]] == ["system", "user"]
  assert json.loads(r["functions"])[0]["name"] in r["prompt"][0]["content"]
  short = get_task("bfcl", categories=["multiple"], max_prompt_chars=1500)
  m = short.data_metrics()
  assert m["data/rows"] + m["data/filtered"] == 200 and m["data/filtered"] > 0


def test_bfcl_unreadable_rows_are_skipped_and_named(tmp_path, monkeypatch, caplog):
  data = tmp_path / "bfcl_eval" / "data"
  (data / "possible_answer").mkdir(parents=True)
  src = f"{package_dir('bfcl_eval')}/data"
  lines = open(f"{src}/BFCL_v4_simple_python.json").read().splitlines()[:5]
  answers = open(f"{src}/possible_answer/BFCL_v4_simple_python.json").read().splitlines()[:5]
  lines[1] = lines[1][:40]  # truncated JSON
  lines[2] = json.dumps(dict(json.loads(lines[2]), function=[{"nom": "f"}]))  # no name
  answers = answers[:4]  # row 4 has no possible answer
  (data / "BFCL_v4_simple_python.json").write_text("\n".join(lines) + "\n")
  (data / "possible_answer" / "BFCL_v4_simple_python.json").write_text("\n".join(answers) + "\n")
  monkeypatch.setattr(bfcl, "package_dir", lambda name: str(tmp_path / name))
  task = bfcl.BFCLTask(categories=["simple_python"], split_seed=99)
  with caplog.at_level("WARNING"):
    rows = task.problems()
  assert [rid for rid, _ in rows] == ["simple_python_0", "simple_python_3"]
  assert sorted(task.skipped) == ["BFCL_v4_simple_python.json:2", "simple_python_2",
                                  "simple_python_4"]
  assert task.data_metrics()["data/skipped"] == 3.0
  assert "skipped 3 unreadable" in caplog.text and "simple_python_4" in caplog.text


def test_humaneval_canonical_solutions_pass_and_empty_is_a_bug():
  task = get_task("humaneval")
  rows = task.make_examples(0, 1000, "train") + task.make_examples(0, 1000, "test")
  assert len(rows) == 164 and not task.skipped
  cols = {k: [r[k] for r in rows] for k in ("test", "entry_point", "header")}
  prompts = [r["prompt"] for r in rows]
  solutions = [r["solution"] for r in rows]
  assert REWARD_FNS.get("humaneval/pass_rate")(prompts, solutions, **cols) == [1.0] * 164
  assert REWARD_FNS.get("humaneval/bug")(prompts, solutions, **cols) == [0.0] * 164
  empty = [""] * 164
  assert REWARD_FNS.get("humaneval/pass_rate")(prompts, empty, **cols) == [0.0] * 164
  assert REWARD_FNS.get("humaneval/bug")(prompts, empty, **cols) == [1.0] * 164
  # A wrong but running function fails its asserts without a bug flag.
  wrong = [f"```python\n{r['header']}\ndef {r['entry_point']}(*args):\n    return None\n```"
           for r in rows[:8]]
  sub = {k: v[:8] for k, v in cols.items()}
  assert REWARD_FNS.get("humaneval/pass_rate")(prompts[:8], wrong, **sub) == [0.0] * 8
  assert REWARD_FNS.get("humaneval/bug")(prompts[:8], wrong, **sub) == [0.0] * 8
  length = REWARD_FNS.get("humaneval/length")
  assert length(prompts[:2], ["x" * 1200, "x" * 1201], **sub) == [1.0, 0.0]


def test_reasoning_gym_correct_is_the_datasets_own_score():
  import reasoning_gym
  task = get_task("reasoning_gym", dataset="basic_arithmetic", config={"max_terms": 3})
  train, test = task.make_examples(0, 40, "train"), task.make_examples(1, 20, "test")
  assert len(train) == 40 and len(test) == 20
  assert not {r["prompt"][1]["content"] for r in train} & {r["prompt"][1]["content"] for r in test}
  assert [r["answer"] for r in task.make_examples(0, 40, "train")] == [r["answer"] for r in train]
  ds = reasoning_gym.create_dataset("basic_arithmetic", seed=0, size=1, max_terms=3)
  cols = {"rg": [r["rg"] for r in train]}
  good = [f"<think>easy</think>\n<answer>{r['answer']}</answer>" for r in train]
  off = [f"<think>x</think><answer>{r['answer']}1</answer> thanks" for r in train]
  for texts in (good, off):
    got = REWARD_FNS.get("reasoning_gym/correct")([None] * 40, texts, **cols)
    want = [ds.score_answer(answer=reasoning_gym_answer(t), entry=r["rg"]["entry"])
            for t, r in zip(texts, train)]
    assert got == want
  assert REWARD_FNS.get("reasoning_gym/correct")([None] * 40, good, **cols) == [1.0] * 40
  assert sum(REWARD_FNS.get("reasoning_gym/correct")([None] * 40, off, **cols)) < 40
  assert REWARD_FNS.get("reasoning_gym/correct")([None], ["no tags 3"], rg=cols["rg"][:1]) == [0.0]
  assert REWARD_FNS.get("reasoning_gym/format")([None] * 2, [good[0], off[0]]) == [1.0, 0.0]
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    get_task("reasoning_gym", dataset="nope")


def reasoning_gym_answer(text):
  from rlx.data.tasks.reasoning import extract_answer
  return extract_answer(text)
