"""Loss library: policy terms (pg, kl, entropy, nll_correct, drpo), preference and RM losses.

    from rlx.losses import LossInputs, total_loss
    loss, metrics = total_loss({'pg': {'clip_high': 0.28}, 'kl': {'coef': 0.04}}, inputs)
"""
from rlx.losses.aggregation import AGGREGATIONS, aggregate, token_weights
from rlx.losses.inputs import LossInputs
from rlx.losses.policy import (KL_ESTIMATORS, drpo, entropy_bonus, importance_ratio,
                               kl_estimate, kl_to_reference, nll_correct, policy_gradient,
                               truncated_is_weights)
from rlx.losses.preference import (PAIR_LOSSES, dpo_loss, ipo_loss, mm_dpo_beta, mm_dpo_loss,
                                   rpo_loss)
from rlx.losses.reward_model import (RM_LOSSES, bradley_terry_loss, multi_attribute_loss,
                                     multi_attribute_reward, multi_response_loss, oprm_loss,
                                     oprm_preference_logprob, oprm_reward, soli_tie_loss,
                                     soli_tie_term)
from rlx.losses.terms import (LOSS_TERMS, check_terms, loss_term, resolve_term, term_options,
                              total_loss)
