"""Decoder LMs (Llama 3.x, Qwen2/2.5, Qwen3 dense), reward-model heads, HF I/O.

Public API (all pure functions of (graphdef, params); no module crosses jit):

  ModelConfig                       frozen, hashable; .from_hf(dict|PretrainedConfig),
                                    .to_hf_dict(), .for_family(name, **kw),
                                    .as_reward_model(num_labels)
  init_model(cfg, key) -> (graphdef, params)
  abstract_model(cfg) -> (graphdef, params of ShapeDtypeStruct)
  forward(graphdef, params, tokens_BT, positions_BT, kv_mask_BS, cache=None,
          cache_index=0, return_hidden=False, remat=None, layers=None, adapters=None)
      -> (logits_BTV | hidden_BTD, cache)   (adapters: `Adapters`, LoRA / int8 / int4
      base inside the projections; built by rlx.models.lora.decoder_adapters)
  lm_head(graphdef, params, hidden_BTD, head_DV=None) | lm_head(params, hidden_BTD) -> logits_BTV
  head_matrix(cfg, params) -> head_DV (the head laid out once, for decoding)
  attend(cfg, q_BTHE, k_BSJE, v_BSJE, q_offset, kv_mask_BS) -> out_BTHE   (the attention
      core: rlx.models.attention.attention with cfg.attention and its block sizes)
  with_attention(cfg, **kw) -> (cfg, graphdef): the runtime fields (attention*, mesh) replaced
  ModelMesh(mesh, batch, heads, kv_heads): cfg.mesh, the device mesh and the mesh axes of
      the activations (rlx.models.sharding; set by the trainer on more than one device)
  init_cache(cfg, batch, max_len, dtype=None) -> {'k', 'v'}: [L, B, S, J, E]
  unstack_layers(cfg, params, adapters=None) -> per-layer params (forward's `layers`)
  init_layer_caches(cfg, batch, max_len, dtype=None) -> per-layer caches
  grow_cache(cache, extra), cache_length(cache)
  positions_from_mask(mask_BT) -> positions_BT
  logical_axes(params) -> same tree, values = PartitionSpec of logical axis names
  config_of(graphdef, params) -> ModelConfig
  token_logprobs(graphdef, params, tokens_BT, mask_BT, chunk_size=128,
                 temperature=1.0) -> (logp_BT, entropy_BT)          [rlx.models.logprobs]
  logprobs_from_logits(logits_BTV, targets_BT, temperature=1.0) -> (logp, entropy)
  load_hf(path, dtype=None, param_dtype=None) -> (cfg, graphdef, params)   [rlx.models.hf_io]
  save_hf(path, cfg, params, tokenizer=None, max_shard_bytes=...)
  load_tokenizer(path, cfg=None)
  load_reward_model(path, ...) -> (cfg, graphdef, params)             [rlx.models.reward_model]
  score(graphdef, params, tokens_BT, mask_BT) -> scores_BL
  init_reward_model(cfg, key, num_labels=1), reward_model_from_lm(...)

Logical axis names: 'vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp',
'layers', 'labels'; KV cache: CACHE_AXES = ('layers', 'batch', 'cache_seq',
'kv_heads', 'head_dim').
"""
from rlx.models.config import (CAUSAL_LM_ARCHITECTURES, FAMILIES, SEQ_CLS_ARCHITECTURES,
                               SUPPORTED_ARCHITECTURES, ModelConfig)
from rlx.models.decoder import (Adapters, Decoder, abstract_model, attend, config_of, forward,
                                head_matrix, init_model, lm_head, logical_axes, num_params,
                                param_specs, positions_from_mask, unstack_layers, with_attention)
from rlx.models.kv_cache import (CACHE_AXES, cache_length, grow_cache, init_cache,
                                 init_layer_caches)
from rlx.models.hf_io import load_hf, load_tokenizer, save_hf
from rlx.models.logprobs import logprobs_from_logits, sequence_logprob, token_logprobs
from rlx.models.sharding import ModelMesh
from rlx.models.reward_model import (init_reward_model, load_reward_model, reward_model_from_lm,
                                     save_reward_model, score)
