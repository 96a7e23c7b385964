"""Defaults for every rlx run. Other configs start from `base.get_config()`.

Every key a run may set exists here; a key not in this file is an error
(`rlx.train.config.validate`). Free-form dicts (estimator options, loss terms,
reward kwargs) are checked by the function they configure.
"""
import ml_collections as mlc


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  del arg
  c = mlc.ConfigDict()
  c.seed = 0
  c.trainer = "rl"  # rl | sft | reward_model

  # Policy. `init`: checkpoint (HF directory at `checkpoint`), random (from
  # `arch`, with the task's tokenizer), or sft (random, then the `sft` stage).
  c.model = mlc.ConfigDict()
  c.model.init = "checkpoint"
  c.model.checkpoint = ""
  c.model.tokenizer = ""  # defaults to `checkpoint`
  c.model.dtype = "float32"  # compute dtype
  c.model.param_dtype = "float32"
  c.model.arch = mlc.ConfigDict(dict(
      model_type="qwen2", hidden_size=128, intermediate_size=384,
      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=256, rope_theta=10000.0,
      tie_word_embeddings=True, rms_norm_eps=1e-6))
  c.model.logprob_chunk = 0  # tokens per chunk in log-prob computation; 0: default (128)
  # Recompute layers in the backward pass: "none", "full" (least memory) or
  # "dots" (keeps the matmul outputs).
  c.model.remat = "none"
  # Attention core: auto | dense | blockwise | cudnn | splash (rlx.models.attention),
  # and its query/key block sizes 'N' or 'NQ,NKV' (blockwise cuts a longer length
  # into the fewest blocks of at most this size, multiples of 8: 1056 -> 3 x 352;
  # splash runs when lengths are multiples of 128).
  c.model.attention = "auto"
  c.model.attention_blocks = "512"
  # LoRA adapters (rank 0: off; rlx/models/lora.py). targets: comma-separated
  # q, k, v, o, gate, up, down, or a regex over param paths ('layers/(q|v)').
  # quantize "int8" / "int4": QLoRA, the frozen base stored int8 (per-output-
  # channel scales) / int4 (a scale per 64 inputs). dropout: on the adapter
  # input, in the update only (0: off).
  c.model.lora = mlc.ConfigDict(dict(rank=0, alpha=16.0, targets="q,k,v,o,gate,up,down",
                                     dropout=0.0, quantize="none"))

  # Reference model for the KL term: the initial policy, or another checkpoint.
  c.ref = mlc.ConfigDict()
  c.ref.source = "initial"  # initial | checkpoint | none
  c.ref.checkpoint = ""
  c.ref.sync_every = 0  # copy the policy into the reference every N steps (0: never)

  # Prompts. Built-in synthetic tasks, or a local file with a field mapping.
  c.data = mlc.ConfigDict()
  c.data.task = "toolcall"  # builtin task name, or "file"
  c.data.task_options = mlc.ConfigDict()  # the built-in task's options, e.g. {'max_operand': 9}
  c.data.path = ""  # jsonl / parquet / save_to_disk folder when task == "file"
  c.data.fields = mlc.ConfigDict()  # e.g. {'prompt': 'question', 'answer': 'solution'}
  c.data.num_train = 20000
  c.data.num_eval = 128
  c.data.max_prompt_len = 64
  c.data.shuffle = True

  # Rewards: name -> {fn: registry name, weight, kwargs}.
  c.rewards = mlc.ConfigDict()
  c.reward_errors = "missing"  # missing (NaN, counted) | fatal
  c.reward_threads = 4

  c.sampling = mlc.ConfigDict()
  c.sampling.group_size = 8
  c.sampling.temperature = 1.0
  c.sampling.top_k = 0
  c.sampling.top_p = 1.0
  c.sampling.min_p = 0.0
  c.sampling.max_new_tokens = 64
  c.sampling.ignore_eos = False  # True: every completion runs to max_new_tokens (benchmarks)
  # Once at most this many of a step's completions are still generating, decode
  # only those (rlx.sampling.SamplingSettings.tail_rows; evaluation too, when its
  # batch is larger): long-tailed lengths stop paying for ended rows. 0: off; else
  # < batch_prompts x group_size. Doubles the sampler's compile time.
  c.sampling.tail_rows = 0

  c.advantage = mlc.ConfigDict()
  c.advantage.estimator = "grpo"
  c.advantage.options = mlc.ConfigDict()
  # Reward transforms, applied in order to the batch before the estimator and the
  # filter: [{"name": "conditioned", "target": "length", "condition": "correct"}, ...]
  # (names and options: docs/methods.md section 2).
  c.advantage.transforms = ()
  # Estimator inputs and transform extras from data columns, {input: column}:
  # task_ids_N (TMN), agent_ids_N (Dr. MAS), or a transform's extras key
  # (e.g. reference_levels_GK for log_sigmoid, one value per prompt).
  c.advantage.columns = mlc.ConfigDict()
  # Estimator inputs the loop produces each round, {input: {name: producer, **options}}
  # (rlx/train/structured.py): pairwise_NM (pairwise, judge), phase_mask_NZT
  # (phase_split), turn_scores_NU / turn_ids_NT (turn_scores / turn_ids),
  # agent_ids_N (agent_parser), reference_rewards_GMK (reference_samples).
  c.advantage.inputs = mlc.ConfigDict()

  # Dynamic sampling: drop groups the filter rejects, re-sample up to
  # `max_rounds` extra rounds to fill the batch.
  c.filter = mlc.ConfigDict()
  c.filter.name = "none"
  c.filter.options = mlc.ConfigDict()
  c.filter.max_rounds = 0

  c.loss = mlc.ConfigDict()
  c.loss.terms = mlc.ConfigDict({
      "pg": {"clip_low": 0.2, "clip_high": 0.2, "aggregation": "token_mean"},
      "kl": {"coef": 0.04, "estimator": "k3"},
  })

  # Completions whose reward `correct_reward` >= `correct_threshold` count as
  # correct (for the nll_correct term and the DRPO objective).
  c.loss.correct_reward = ""
  c.loss.correct_threshold = 1.0
  # Old-policy log-probs for the ratio: "auto" recomputes them when a step
  # makes several updates and uses the detached current ones otherwise;
  # "sampler" takes the sampler's (T=1) log-probs.
  c.loss.old_logprobs = "auto"  # auto | recompute | sampler

  c.optim = mlc.ConfigDict()
  c.optim.name = "adamw"
  c.optim.lr = 1e-6
  c.optim.schedule = "constant"  # constant | cosine | linear
  c.optim.warmup_steps = 0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.optim.grad_accum = 1

  c.train = mlc.ConfigDict()
  c.train.steps = 100
  c.train.batch_prompts = 8  # prompts per step; completions = batch_prompts * group_size
  c.train.minibatches = 1  # policy updates per epoch over the step's rollouts
  c.train.epochs = 1
  # No compute on padding (rlx/train/layout.py): after sampling, the reference/old
  # log-probs and the updates run on the batch trimmed to its longest completion
  # and longest real prompt, each rounded up to a bucket (one compile of the
  # reference and update steps per bucket seen). (): 16, 24, 32, 48, 64, 96, ...
  # (powers of two and 3 x powers of two) up to sampling.max_new_tokens /
  # data.max_prompt_len (always included);
  # (max_new_tokens,) turns trimming off.
  c.train.length_buckets = ()
  c.train.prompt_buckets = ()
  # Several (prompt + completion) sequences per row of the trimmed length, with
  # segment ids; loss and gradients equal the unpacked ones. The LM head runs on
  # the completion slots only when they are fewer than the packed slots.
  c.train.packing = False
  # The G completions of a group share their prompt: the reference, old log-prob
  # and update passes run each prompt once and its keys/values serve the group
  # (same values up to float rounding; rlx.models.logprobs.completion_logprobs).
  # Not combined with packing: with train.packing on, packing is used instead.
  c.train.share_prompts = True
  c.train.log_every = 1
  c.train.eval_every = 25
  c.train.ckpt_every = 25
  c.train.keep_checkpoints = 2
  c.train.export_hf = True
  c.train.progress = True

  c.eval = mlc.ConfigDict()
  c.eval.batch_prompts = 64
  c.eval.temperature = 0.0  # 0: greedy
  c.eval.max_new_tokens = -1  # -1: sampling.max_new_tokens

  # Supervised warm start (trainer == "sft", or model.init == "sft").
  c.sft = mlc.ConfigDict()
  c.sft.steps = 600
  c.sft.batch_size = 32
  c.sft.lr = 1e-3
  c.sft.warmup_steps = 50
  c.sft.corrupt_rate = 0.3
  c.sft.max_len = 0  # 0: max_prompt_len + max_new_tokens

  # Reward-model training (trainer == "reward_model"; configs/reward_model.py).
  c.rm = mlc.ConfigDict(dict(loss="bradley_terry", margin=0.0, center_coef=0.0,
                             tie_margin=0.0, max_len=128, template="concat",
                             append_eos=True, eval_path="", num_ratings=9, regions=(),
                             attributes=(), attribute_weights=()))

  c.mesh = mlc.ConfigDict()
  c.mesh.axes = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.mesh.dcn_axes = mlc.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # all 1: one slice
  c.mesh.rules = ()  # extra logical-axis rules, e.g. (("mlp", "tensor"),)
  # Reward models: "policy" (same mesh and rules; per-process mesh across
  # processes), "local", "last:N" (a sub-mesh of N devices) or "replicated".
  # The reference model always shares the policy's shardings.
  c.mesh.reward_models = "policy"

  # Multi-host start-up (rlx.parallel.distributed). Empty / -1: from the
  # environment (RLX_COORDINATOR, SLURM, TPU VM, ...).
  c.distributed = mlc.ConfigDict(dict(
      mode="auto", coordinator_address="", num_processes=-1, process_id=-1,
      cpu_collectives="gloo", timeout_s=-1))
  return c
