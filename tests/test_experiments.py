"""The ablation harness (experiments/run_cell.py, run_grid.py, summarize.py,
configs/ablation.py, rlx/data/tasks/extra_rewards.py) without training."""
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))

import run_cell  # noqa: E402
import run_grid  # noqa: E402
import summarize  # noqa: E402

from rlx.advantages import AdvantageInputs, compute_advantages  # noqa: E402
from rlx.rewards.registry import REWARD_FNS  # noqa: E402
from rlx.train import metrics as metrics_lib  # noqa: E402
from rlx.train.config import load_config  # noqa: E402

MACHINE = {"platform": "cpu", "device": "cpu", "num_devices": 1, "cpu": "Test CPU", "cores": 2,
           "jax": "0.0"}


# ----------------------------------------------------------------------------
# Synthetic runs.


def _write_cell(runs, cellset, task, variant, est, seed, rewards, evals, train, *,
                steps=4, rl_wall=100.0, sft_wall=30.0, sft_ran=True, status="done"):
  """A finished cell: evals {step: {name: value}}, train {step: {name: value}}."""
  d = os.path.join(runs, cellset, f"{est}_s{seed}")
  os.makedirs(d)
  rows = []
  for step in range(steps + 1):
    r = {"step": step}
    for n, v in train.get(step, {}).items():
      r[f"reward/{n}/mean"] = v
    for n, v in evals.get(step, {}).items():
      r[f"eval/{n}"] = v
    if step:
      r["time/step_s"] = 1.0 + seed
    if len(r) > 1:
      rows.append(r)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if status == "done":  # the exported policy
    os.makedirs(os.path.join(d, "hf"))
    with open(os.path.join(d, "hf", "config.json"), "w") as f:
      f.write("{}")
  meta = {"task": task, "variant": variant, "scale": "small", "estimator": est, "seed": seed,
          "steps": steps, "sft_steps": 300, "sft_batch": 16, "cellset": cellset,
          "rewards": rewards, "group_size": 8, "batch_prompts": 16, "max_new_tokens": 48,
          "arch": {"num_hidden_layers": 3, "hidden_size": 128},
          "sft_dir": f"sft/{task}_s{seed}", "sft_wall_s": sft_wall, "sft_ran_here": sft_ran,
          "commit": "abc", "machine": MACHINE, "status": status, "rl_wall_s": rl_wall}
  with open(os.path.join(d, "cell.json"), "w") as f:
    json.dump(meta, f)
  return d


@pytest.fixture()
def toolcall_runs(tmp_path):
  """grpo and gdpo, seeds 0 and 1; format = (0.5, 0.6 | 0.7, 0.9) at the last step."""
  runs = str(tmp_path / "runs")
  final = {("grpo", 0): (0.5, 0.2), ("grpo", 1): (0.6, 0.4),
           ("gdpo", 0): (0.7, 0.3), ("gdpo", 1): (0.9, 0.5)}
  for (est, seed), (fmt_, cor) in final.items():
    init = {"format": 0.4 + 0.1 * seed, "correct": 0.1, "completion_length": 50.0 + seed}
    evals = {0: init, 2: {"format": fmt_ - 0.2, "correct": cor, "completion_length": 40.0},
             4: {"format": fmt_, "correct": cor, "completion_length": 30.0 + 10 * seed}}
    train = {s: {"format": 0.1 * s, "correct": 0.05 * s} for s in range(1, 5)}
    _write_cell(runs, "toolcall", "toolcall", "default", est, seed,
                {"format": 1.0, "correct": 1.0}, evals, train,
                rl_wall=100.0 + seed, sft_ran=(est == "grpo"))
  return runs


def _table_row(md, section, label):
  part = md.split(section, 1)[1]
  return next(l for l in part.splitlines() if l.startswith(f"| {label} |"))


def test_summary_tables_on_synthetic_runs(toolcall_runs, tmp_path):
  res = str(tmp_path / "results")
  written = summarize.summarize(toolcall_runs, res)
  assert sorted(os.path.basename(p) for p in written) == ["summary.md", "toolcall.md",
                                                         "toolcall.png"]
  md = open(os.path.join(res, "toolcall.md")).read()
  final = "## Held-out rewards at the last RL step"
  # Columns: estimator, seeds, format, correct, format failures, length.
  # GDPO format (0.7, 0.9): mean 0.8, std (ddof 1) 0.1414; failures 0.2 ± 0.1414.
  assert _table_row(md, final, "GDPO") == (
      "| GDPO | 2 | 0.800 ± 0.141 | 0.400 ± 0.141 | 0.200 ± 0.141 | 35.0 ± 7.1 |")
  assert _table_row(md, final, "GRPO") == (
      "| GRPO | 2 | 0.550 ± 0.071 | 0.300 ± 0.141 | 0.450 ± 0.071 | 35.0 ± 7.1 |")
  # The shared SFT start: step 0 of one cell per seed, format (0.4, 0.5).
  assert _table_row(md, final, "SFT start (step 0)") == (
      "| SFT start (step 0) | 2 | 0.450 ± 0.071 | 0.100 ± 0.000 | 0.550 ± 0.071 | 50.5 ± 0.7 |")
  # Mean over the eval points after step 0: GDPO format seed 0 (0.5, 0.7) -> 0.6,
  # seed 1 (0.7, 0.9) -> 0.8.
  assert _table_row(md, "averaged over the eval points", "GDPO").startswith(
      "| GDPO | 2 | 0.700 ± 0.141 |")
  # Paired with GRPO per seed: format (0.7-0.5, 0.9-0.6), correct (0.3-0.2, 0.5-0.4).
  assert _table_row(md, "Paired differences from GRPO", "GDPO") == (
      "| GDPO | 2 | 0.250 ± 0.071 (2/2 higher) | 0.100 ± 0.000 (2/2 higher) |")
  assert "| GDPO | 100 ± 1 | 101 |" in md  # RL wall; gdpo cells did not run the SFT
  assert "| GRPO | 100 ± 1 | 131 |" in md  # seed 1: 101 s RL + 30 s SFT run there
  with open(os.path.join(res, "toolcall.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  summary = open(os.path.join(res, "summary.md")).read()
  # 4 cells x ~100.5 s RL + 2 distinct SFT dirs x 30 s = 462 s = 0.13 h.
  assert "Total wall time: 0.13 h (0.11 h RL in 4 cells + 0.02 h for 2 SFT" in summary
  assert "Test CPU, 2 cores" in summary


def test_summary_violation_uses_logged_only_reward(tmp_path):
  runs = str(tmp_path / "runs")
  rewards = {"correct": 1.0, "length_ok_if_correct": 1.0, "length_ok": 0.0}
  for seed, lok in ((0, 0.75), (1, 0.25)):
    evals = {0: {"correct": 0.5, "length_ok_if_correct": 0.2, "length_ok": 0.5, "completion_length": 9.0},
             4: {"correct": 0.5, "length_ok_if_correct": 0.4, "length_ok": lok, "completion_length": 9.0}}
    _write_cell(runs, "arith_conditioned", "arith", "conditioned", "bnpo", seed, rewards,
                evals, {})
  # An unfinished cell is listed, not tabulated.
  _write_cell(runs, "arith_conditioned", "arith", "conditioned", "gdpo", 0, rewards, {}, {},
              status="running")
  res = str(tmp_path / "res")
  summarize.summarize(runs, res)
  md = open(os.path.join(res, "arith_conditioned.md")).read()
  header = next(l for l in md.splitlines() if l.startswith("| estimator"))
  assert header == ("| estimator | seeds | `correct` | `length_ok_if_correct` | `length_ok` | "
                    "over length limit (1 - `length_ok`) | length (tokens) |")
  assert _table_row(md, "## Held-out rewards at the last", "BNPO") == (
      "| BNPO | 2 | 0.500 ± 0.000 | 0.400 ± 0.000 | 0.500 ± 0.354 | 0.500 ± 0.354 | 9.0 ± 0.0 |")
  assert "GDPO" not in md
  assert "`arith_conditioned/gdpo_s0`" in open(os.path.join(res, "summary.md")).read()


def test_summary_refuses_mixed_budgets(toolcall_runs, tmp_path):
  _write_cell(toolcall_runs, "toolcall", "toolcall", "default", "bnpo", 0,
              {"format": 1.0, "correct": 1.0},
              {0: {"format": 0.1, "correct": 0.1}, 6: {"format": 0.2, "correct": 0.1}}, {}, steps=6)
  with pytest.raises(ValueError, match="different budgets"):
    summarize.summarize(toolcall_runs, str(tmp_path / "res"))


def test_summary_without_cells_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="No finished cells"):
    summarize.summarize(str(tmp_path), str(tmp_path / "res"))


def test_compare_ignores_timings_and_finds_differences(toolcall_runs, tmp_path):
  a = os.path.join(toolcall_runs, "toolcall", "gdpo_s0")
  b = os.path.join(toolcall_runs, "toolcall", "gdpo_s1")  # other values, other time/step_s
  same = str(tmp_path / "copy")
  os.makedirs(same)
  rows = summarize.read_jsonl(os.path.join(a, "metrics.jsonl"))
  for r in rows:
    r["time/step_s"] = 123.0
  with open(os.path.join(same, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert summarize.compare(a, same) == (0.0, [])
  assert summarize.main(["compare", a, same]) == 0
  worst, keys = summarize.compare(a, b)
  assert worst == pytest.approx(10.0)  # eval/completion_length 30 vs 40 at step 4
  assert "eval/format" in keys and "time/step_s" not in keys
  assert summarize.main(["compare", a, b]) == 1


def test_smooth_is_a_trailing_mean():
  np.testing.assert_allclose(summarize.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2),
                             [1.0, 2.0, 4.0, 6.0])
  np.testing.assert_allclose(summarize.smooth(np.array([2.0, 4.0]), 5), [2.0, 3.0])


# ----------------------------------------------------------------------------
# The cell command's arguments (no training).


def test_cell_defaults_are_the_real_budget():
  a = run_cell.build_parser().parse_args(["--task", "arith", "--estimator", "gdpo"])
  assert (a.steps, a.sft_steps, a.sft_batch, a.seed, a.variant, a.scale) == (
      100, 0, 16, 0, "default", "small")
  # 0: the task's SFT budget, resolved before anything runs.
  for task, steps in (("arith", 2000), ("toolcall", 300), ("code", 300)):
    a = run_cell.build_parser().parse_args(["--task", task, "--estimator", "gdpo"])
    run_cell.check_args(a)
    assert a.sft_steps == steps
  a = run_cell.build_parser().parse_args(["--task", "arith", "--estimator", "gdpo",
                                          "--sft_steps", "7"])
  run_cell.check_args(a)
  assert a.sft_steps == 7
  assert a.out == os.path.join("experiments", "runs")
  with pytest.raises(SystemExit):
    run_cell.build_parser().parse_args(["--task", "math", "--estimator", "gdpo"])


@pytest.mark.parametrize("argv, needle", [
    (["--task", "arith", "--estimator", "gdpoo"], "gdpo"),  # lists the valid names
    (["--task", "toolcall", "--variant", "conditioned", "--estimator", "gdpo"],
     "arith/conditioned"),
    (["--task", "arith", "--estimator", "gdpo", "--steps", "0"], "--steps must be >= 1"),
])
def test_cell_bad_arguments_fail_before_compute(argv, needle, tmp_path, capsys):
  assert run_cell.main(argv + ["--out", str(tmp_path)]) == 2
  assert needle in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


def test_cell_paths_and_config():
  assert run_cell.cellset_name("arith", "conditioned", "small") == "arith_conditioned"
  assert run_cell.cellset_name("code", "conditioned", "gpu") == "code_conditioned_gpu"
  assert run_cell.cellset_name("toolcall") == "toolcall"
  assert run_cell.cell_dir("o", "arith", "default", "small", "bnpo", 2) == os.path.join(
      "o", "arith", "bnpo_s2")
  # The SFT folder depends on task, scale, seed and SFT budget only (shared by variants).
  assert run_cell.sft_dir("o", "arith", "small", 1, 300, 16) == os.path.join(
      "o", "sft", "arith_small_s1_sft300x16")
  a = run_cell.build_parser().parse_args(
      ["--task", "arith", "--variant", "conditioned", "--estimator", "dr_grpo", "--seed", "2",
       "--steps", "7", "--sft_steps", "9", "--sft_batch", "4"])
  cfg = load_config("ablation.py", run_cell.config_arg(a, checkpoint="/ck/hf"))
  assert (cfg.model.init, cfg.model.checkpoint, cfg.advantage.estimator) == (
      "checkpoint", "/ck/hf", "dr_grpo")
  assert (cfg.seed, cfg.train.steps, cfg.sft.steps, cfg.sft.batch_size) == (2, 7, 9, 4)
  assert {n: (r.fn, r.weight) for n, r in cfg.rewards.items()} == {
      "correct": ("arith/correct", 1.0),
      "length_ok_if_correct": ("arith/length_if_correct", 1.0),
      "length_ok": ("arith/length", 0.0)}
  sft = load_config("ablation.py", run_cell.config_arg(a, stage="sft"))
  assert (sft.trainer, sft.model.init, sft.sft.steps) == ("sft", "sft", 9)


def test_finished_cell_is_reused_only_with_the_same_budget(tmp_path):
  out = str(tmp_path)
  d = _write_cell(out, "toolcall", "toolcall", "default", "gdpo", 0,
                  {"format": 1.0, "correct": 1.0}, {}, {}, steps=4)
  argv = ["--task", "toolcall", "--estimator", "gdpo", "--out", out, "--sft_steps", "300"]
  args = run_cell.build_parser().parse_args(argv + ["--steps", "4"])
  assert run_cell.run_cell(args)["rl_wall_s"] == 100.0  # skipped: nothing trained
  args = run_cell.build_parser().parse_args(argv + ["--steps", "5"])
  with pytest.raises(ValueError, match="--force"):
    run_cell.run_cell(args)
  assert sorted(os.listdir(d)) == ["cell.json", "hf", "metrics.jsonl"]


def test_summary_leaves_out_a_cell_that_stopped_early(toolcall_runs, tmp_path):
  # Marked done (as run_cell did before it checked), but its metrics end at step 3 of 4.
  d = _write_cell(toolcall_runs, "toolcall", "toolcall", "default", "bnpo", 0,
                  {"format": 1.0, "correct": 1.0}, {0: {"format": 0.4, "correct": 0.1},
                                                    2: {"format": 0.9, "correct": 0.9}},
                  {s: {"format": 0.1, "correct": 0.1} for s in range(1, 4)}, steps=3)
  with open(os.path.join(d, "cell.json")) as f:
    meta = json.load(f)
  meta["steps"] = 4
  with open(os.path.join(d, "cell.json"), "w") as f:
    json.dump(meta, f)
  cells, unfinished = summarize.load_cells(toolcall_runs)
  assert unfinished == [d] and {c["estimator"] for c in cells} == {"grpo", "gdpo"}
  assert "at step 3, not at the last step 4" in summarize.incomplete(meta, summarize.read_jsonl(
      os.path.join(d, "metrics.jsonl")))
  summarize.summarize(toolcall_runs, str(tmp_path / "results"))
  md = (tmp_path / "results" / "toolcall.md").read_text()
  assert "BNPO" not in md
  assert "toolcall/bnpo_s0" in (tmp_path / "results" / "summary.md").read_text()


def test_cell_stopped_by_a_signal_is_not_done_and_resumes(tmp_path, monkeypatch, capsys):
  import rlx.main
  out = str(tmp_path)
  monkeypatch.setattr(run_cell, "ensure_sft", lambda args: (str(tmp_path / "hf"), 1.0, False))
  # The fake trainer's runs: a SIGTERM in step 3 (steps 0-2 logged), one during the
  # last step (step 4 logged, no export), then the end (the export).
  plan = [(2, False), (4, False), (4, True)]

  def fake_run(cfg, wd):
    stop_at, export = plan.pop(0)
    rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl")) if os.path.exists(
        os.path.join(wd, "metrics.jsonl")) else []
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
      for step in range(len(rows), stop_at + 1):
        f.write(json.dumps({"step": step, "eval/format": 0.5}) + "\n")
    if export:
      os.makedirs(os.path.join(wd, "hf"))
      with open(os.path.join(wd, "hf", "config.json"), "w") as f:
        f.write("{}")
    return {}

  monkeypatch.setattr(rlx.main, "run", fake_run)
  argv = ["--task", "toolcall", "--estimator", "gdpo", "--out", out, "--sft_steps", "300",
          "--steps", "4"]
  assert run_cell.main(argv) == 3
  meta_path = os.path.join(out, "toolcall", "gdpo_s0", "cell.json")
  with open(meta_path) as f:
    meta = json.load(f)
  assert (meta["status"], meta["stopped_at_step"], meta["resumed"]) == ("stopped", 2, False)
  meta["rl_wall_s"] = 1000.0  # the stopped part's time is added on resume
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  assert run_cell.main(argv) == 3  # stopped in the last step: logged, not exported
  with open(meta_path) as f:
    meta = json.load(f)
  assert (meta["status"], meta["stopped_at_step"], meta["resumed"]) == ("stopped", 4, True)
  assert meta["rl_wall_s"] >= 1000.0
  assert run_cell.main(argv) == 0
  with open(meta_path) as f:
    meta = json.load(f)
  assert (meta["status"], meta["resumed"], meta["final"]) == ("done", True,
                                                               {"step": 4, "eval/format": 0.5})
  assert meta["rl_wall_s"] >= 1000.0 and plan == []
  assert run_cell.main(argv) == 0  # finished: skipped (plan is empty: no training)
  assert '"status": "done"' in capsys.readouterr().out
  # Another budget for the same cell: exit status 2 with the reason, before any compute.
  assert run_cell.main(argv[:-1] + ["5"]) == 2
  assert "pass --force" in capsys.readouterr().err


def test_summary_reads_non_finite_values_and_rejects_repeated_steps(toolcall_runs, tmp_path):
  d = os.path.join(toolcall_runs, "toolcall", "grpo_s0")
  path = os.path.join(d, "metrics.jsonl")
  with open(path) as f:
    lines = f.readlines()
  row = json.loads(lines[1])
  row["loss"] = "nan"  # as rlx.train.metrics writes a non-finite value
  lines[1] = json.dumps(row) + "\n"
  with open(path, "w") as f:
    f.writelines(lines + ['{"step": 4, "eval/format": 0.'])  # a line cut by a kill
  rows = summarize.read_jsonl(path)
  assert len(rows) == len(lines) and np.isnan(rows[1]["loss"])
  assert summarize.compare(d, d) == (0.0, [])
  with open(path, "a") as f:
    f.write("\n" + lines[-1])  # step 4 twice
  cells, unfinished = summarize.load_cells(toolcall_runs)
  assert unfinished == [d] and len(cells) == 3
  assert "repeat steps [4]" in summarize.incomplete(
      {"status": "done", "steps": 4, "rewards": {"format": 1.0}}, summarize.read_jsonl(path))


def test_grid_commands():
  a = run_grid.build_parser().parse_args(
      ["--tasks", "toolcall", "arith:conditioned", "--estimators", "grpo", "gdpo",
       "--seeds", "0", "1", "--steps", "3"])
  cmds = run_grid.cell_commands(a)
  assert len(cmds) == 8
  key = lambda c: (c[c.index("--task") + 1], c[c.index("--variant") + 1],
                   c[c.index("--seed") + 1], c[c.index("--estimator") + 1])
  # Task-major, then seed, then estimator: a seed's estimators follow each other.
  assert [key(c) for c in cmds[:4]] == [("toolcall", "default", "0", "grpo"),
                                        ("toolcall", "default", "0", "gdpo"),
                                        ("toolcall", "default", "1", "grpo"),
                                        ("toolcall", "default", "1", "gdpo")]
  assert key(cmds[4]) == ("arith", "conditioned", "0", "grpo")
  assert all(c[c.index("--steps") + 1] == "3" and c[c.index("--sft_steps") + 1] == "0"
             for c in cmds)
  d = run_grid.build_parser().parse_args([])
  assert (d.tasks, d.estimators, d.seeds) == (
      ["toolcall", "arith", "arith:conditioned", "code:conditioned"],
      ["grpo", "dr_grpo", "gdpo", "bnpo"], [0, 1, 2])


# ----------------------------------------------------------------------------
# Config and rewards.


def test_prompts_fit_the_prompt_buckets(tmp_path):
  from rlx.data import get_task, make_char_tokenizer, tokenize_prompts
  tok = make_char_tokenizer(str(tmp_path / "tok"))
  for task, variant in (("toolcall", "default"), ("arith", "conditioned"), ("code", "conditioned")):
    cfg = load_config("ablation.py", f"task={task},variant={variant}")
    rows = []
    for seed in range(3):  # the eval prompts of seeds 0-2 and a slice of train
      rows += get_task(task).make_examples(seed + 1, cfg.data.num_eval, "test")
      rows += get_task(task).make_examples(seed, 2000, "train")
    tokenize_prompts(tok, [r["prompt"] for r in rows], cfg.data.max_prompt_len)  # raises if long


def test_gpu_scale_is_bigger():
  s = load_config("ablation.py", "task=toolcall,scale=gpu")
  b = load_config("ablation.py", "task=toolcall")
  assert s.model.arch.hidden_size == 4 * b.model.arch.hidden_size
  assert s.model.arch.num_hidden_layers == 2 * b.model.arch.num_hidden_layers
  assert s.sampling.max_new_tokens == 2 * b.sampling.max_new_tokens
  assert s.data.max_prompt_len + s.sampling.max_new_tokens <= s.model.arch.max_position_embeddings


def test_code_length_rewards():
  import rlx.data.tasks.extra_rewards  # noqa: F401
  tests = json.dumps([[[1], 4], [[2], 7]])
  comps = ["def f(x): return x*3+1",                      # passes, 22 chars
           "def f(x): return (x*3+1)            +0",      # passes, 38 chars
           "def f(x): return x*3",                        # fails, 20 chars
           "def f(x): return x*3+1"]                      # no tests: missing
  cols = {"tests": [tests, tests, tests, None]}
  length = REWARD_FNS.get("code/length")([""] * 4, comps, max_len=32, **cols)
  cond = REWARD_FNS.get("code/length_if_pass")([""] * 4, comps, max_len=32, **cols)
  assert length == [1.0, 0.0, 1.0, None]
  assert cond == [1.0, 0.0, 0.0, None]
  assert REWARD_FNS.get("code/length")([""], comps[1:2], max_len=40, tests=[tests]) == [1.0]


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "gdpo", "bnpo"])
def test_logged_only_reward_leaves_advantages_unchanged(estimator):
  """A weight-0 reward (the violation monitors) changes no advantage bit."""
  rng = np.random.default_rng(0)
  r2 = rng.integers(0, 2, (16, 2)).astype(np.float32)
  r2[:, 1] = rng.integers(0, 5, 16) / 4  # graded in [0, 1]
  r3 = np.concatenate([r2, rng.integers(0, 2, (16, 1)).astype(np.float32)], 1)
  groups = np.repeat(np.arange(4), 4)
  opts = {"eps": 1e-4} if estimator in ("grpo", "gdpo") else {}
  a2 = compute_advantages(estimator, AdvantageInputs.create(r2, groups), 4,
                          diagnostics=False, **opts)[0]
  a3 = compute_advantages(estimator, AdvantageInputs.create(
      r3, groups, weights_K=jnp.asarray([1.0, 1.0, 0.0])), 4, diagnostics=False, **opts)[0]
  assert np.abs(np.asarray(a2)).max() > 0.1
  np.testing.assert_array_equal(np.asarray(a2), np.asarray(a3))
