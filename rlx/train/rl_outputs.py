"""An RL run's outputs: held-out evaluation, the step's metrics row, logging,
checkpoints, the progress bar and the final export (rlx/train/rl.py's last stage).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from rlx import sampling
from rlx.data import tokenize_prompts
from rlx.models import hf_io
from rlx.models import lora as lora_lib
from rlx.train import steps
from rlx.train.checkpoint import Checkpointer
from rlx.train.metrics import MetricsWriter, plot_curves, read_jsonl
from rlx.train.rl_setup import RLRun, _checkpoint_target, reward_columns, sample_jit
from rlx.train.scoring import completion_id_lists

if TYPE_CHECKING:
  from rlx.train.rl import Advantages, CollectedGroups, StepBatch, UpdateResult


class _Stop:
  """SIGTERM: finish the current step, save a checkpoint, exit."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    try:
      self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Signal %d: saving a checkpoint and exiting after this step.", signum)
    self.requested = True

  def __exit__(self, *a):
    for s, h in self._old.items():
      signal.signal(s, h)


# ---- evaluation -----------------------------------------------------------------


def evaluate(run: RLRun, params: Any) -> dict[str, float]:
  """Mean held-out rewards over `run.eval_rows` (greedy unless config.eval.temperature > 0)."""
  cfg, place, tok = run.cfg, run.place, run.policy.tokenizer
  batch_prompts = cfg.eval.batch_prompts
  rewards, lengths = [], []
  for start in range(0, len(run.eval_rows), batch_prompts):
    rows = run.eval_rows[start:start + batch_prompts]
    n_real = len(rows)
    rows = rows + [rows[-1]] * (batch_prompts - n_real)  # static shape: pad with repeats
    mine = place.local_rows(batch_prompts)
    local = rows[mine]
    tokens, mask = tokenize_prompts(tok, [r["prompt"] for r in local], cfg.data.max_prompt_len)
    sample_params, adapters = run.fns.sample_inputs(params)
    rollout = sample_jit(run.policy.graphdef, sample_params,
                      *place.to_global((tokens, mask), batch_prompts),
                      jax.random.fold_in(run.eval_key, start), run.eval_settings, adapters)
    rollout = place.to_local(rollout)
    texts = sampling.decode_completions(tok, rollout)
    r, _ = run.scorer([r["prompt"] for r in local], texts, reward_columns(local),
                      completion_ids=completion_id_lists(rollout.completion_tokens,
                                                         rollout.completion_mask))
    real = np.arange(mine.start, mine.stop) < n_real
    rewards.append(place.gather(np.where(real[:, None], r, np.nan)))
    lengths.append(place.gather(np.where(real, rollout.completion_lengths, -1)))
  r = np.concatenate(rewards)
  ln = np.concatenate(lengths)
  m = {f"eval/{n}": float(np.nanmean(r[:, j])) for j, n in enumerate(run.scorer.names)}
  m["eval/completion_length"] = float(ln[ln >= 0].mean())
  return m


def _reward_stats(rewards_NK: np.ndarray, valid_N: np.ndarray, names) -> dict[str, float]:
  m = {}
  for j, name in enumerate(names):
    x = rewards_NK[valid_N, j] if valid_N.any() else rewards_NK[:, j]
    x = x[np.isfinite(x)]
    m[f"reward/{name}/mean"] = float(x.mean()) if x.size else float("nan")
    m[f"reward/{name}/std"] = float(x.std()) if x.size else float("nan")
  return m


def step_metrics(run: RLRun, groups: CollectedGroups, batch: StepBatch, adv: Advantages,
                 updates: UpdateResult, step_start: float) -> dict[str, Any]:
  """The step's metrics row: rewards, scorer counts, advantages, losses, lengths, times."""
  place = run.place
  valid_N = place.gather(batch.local_valid_N)
  lengths_N = place.gather(batch.local_rollout.completion_lengths)
  m: dict[str, Any] = _reward_stats(place.gather(batch.local_rewards_NK), valid_N,
                                    run.scorer.names)
  m.update(groups.score_metrics)
  m.update(jax.device_get(adv.diagnostics))
  m.update(updates.metrics)
  m["completion/length_mean"] = float(lengths_N.mean())
  m["completion/length_max"] = float(lengths_N.max())
  m["completion/truncated"] = float(place.gather(batch.local_rollout.truncated).mean())
  m["filter/kept_groups"] = float(valid_N.sum() // run.group_size)
  m["filter/rounds"] = float(groups.rounds)
  m["time/sample_s"], m["time/score_s"] = groups.sample_s, groups.score_s
  m["time/update_s"] = updates.seconds
  m["time/step_s"] = time.time() - step_start
  m["memory/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  m["throughput/tokens_per_s"] = float(lengths_N.sum() * groups.rounds) / max(groups.sample_s,
                                                                             1e-9)
  return m


@dataclasses.dataclass
class Outputs:
  """Where a run writes: metrics, checkpoints, the progress bar."""
  writer: MetricsWriter
  ckpt: Checkpointer
  progress: Any  # tqdm bar or None

  def say(self, line: str) -> None:
    """One console line (above the progress bar, which stays intact)."""
    if self.progress is not None:
      self.progress.write(line, file=sys.stderr)
    elif jax.process_index() == 0:
      logging.info("%s", line)

  def close(self) -> None:
    self.ckpt.close()
    if self.progress is not None:
      self.progress.close()
    self.writer.close()


def log_eval_checkpoint(run: RLRun, out: Outputs, step: int, m: dict[str, Any],
                        state: steps.TrainState, ref_params: Any, stop: _Stop) -> dict[str, float]:
  """After `step`: eval if due, write the metrics row if due, advance the
  progress bar, checkpoint if due. Returns the row written (or {})."""
  cfg = run.cfg
  done = step + 1 == cfg.train.steps
  if cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or done):
    m.update(evaluate(run, state.params))
    out.say(eval_line(step + 1, m, run.scorer.names))
  row = {}
  if (step + 1) % cfg.train.log_every == 0 or done or any(k.startswith("eval/") for k in m):
    row = out.writer.write(step + 1, m)
  if out.progress is not None:
    out.progress.update(1)
    out.progress.set_postfix({n[:12]: f"{m[f'reward/{n}/mean']:.3f}" for n in run.scorer.names},
                             refresh=False)
  if (cfg.train.ckpt_every and (step + 1) % cfg.train.ckpt_every == 0) or done or stop.requested:
    out.ckpt.save(step + 1, _checkpoint_target(run, state, ref_params), run.prompts.get_state(),
                  {"step": step + 1})
  return row


def finish(run: RLRun, workdir: str, out: Outputs, state: steps.TrainState,
           stopped: bool, seconds: float) -> None:
  """Closes the outputs; unless stopped, exports the policy and plots the curves."""
  cfg = run.cfg
  out.close()
  run.scorer.close()
  export = cfg.train.export_hf and not stopped
  # Every process takes part in gathering the sharded params; process 0 writes.
  host_params = run.place.fetch(run.fns.model_params(state.params)) if export else None
  adapters = run.place.fetch(state.params) if export and run.lora is not None else None
  if jax.process_index() == 0 and not stopped:
    if export:
      hf_io.save_hf(os.path.join(workdir, "hf"), run.policy.cfg, host_params,
                    tokenizer=run.policy.tokenizer)  # LoRA: the merged model
      if adapters is not None:
        lora_lib.export_peft(os.path.join(workdir, "peft"), run.policy.cfg, run.lora.spec,
                             adapters, base_model_name_or_path=cfg.model.checkpoint)
    names = run.scorer.names
    keys = ([f"reward/{n}/mean" for n in names] + [f"eval/{n}" for n in names]
            + ["completion/length_mean", "loss"])
    plot_curves(read_jsonl(out.writer.path), keys, os.path.join(workdir, "rewards.png"),
                title=f"{cfg.advantage.estimator} on {cfg.data.task}")
  if stopped:
    logging.warning("RL stopped by a signal after %.1f s; the checkpoint in %s resumes it.",
                    seconds, workdir)
  elif jax.process_index() == 0:
    written = [out.writer.path, os.path.join(workdir, "rewards.png"), os.path.join(workdir, "tb")]
    if export:
      written.append(os.path.join(workdir, "hf"))
    logging.info("RL finished in %.1f s; wrote %s", seconds, ", ".join(written))


def eval_line(step: int, m: dict[str, Any], names) -> str:
  """'eval at step 20: format 0.500, correct 0.223, completion length 54.1'."""
  parts = [f"{n} {m[f'eval/{n}']:.3f}" for n in names]
  return (f"eval at step {step}: {', '.join(parts)}, "
          f"completion length {m['eval/completion_length']:.1f}")
