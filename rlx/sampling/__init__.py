"""KV-cache sampling of completions (prefill + decode loop, group sampling)."""
from rlx.sampling.filters import (apply_temperature, filter_logits, min_p_filter, token_logprob,
                                  top_k_filter, top_k_top_p_filter, top_p_filter)
from rlx.sampling.sampler import (Rollout, bucket_length, decode_completions, pad_prompts,
                                  sample)
from rlx.sampling.step import SamplingSettings, categorical, sample_step, sampling_logits
