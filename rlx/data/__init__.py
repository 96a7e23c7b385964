"""rlx data: tokenizer, built-in synthetic tasks, local datasets, grain pipelines.

Importing `rlx.data` registers the built-in tasks (TASKS) and their reward
functions (rlx.rewards.registry.REWARD_FNS).
"""
from rlx.data.batch import make_sft_batch, tokenize_prompts
from rlx.data.pipeline import PromptIterator, make_prompt_iterator
from rlx.data.sources import load_rows, read_rows
from rlx.data.tasks import TASKS, Task, get_task
from rlx.data.tokenizer import make_char_tokenizer

__all__ = [
    "TASKS", "Task", "get_task", "make_char_tokenizer", "load_rows", "read_rows",
    "make_prompt_iterator", "PromptIterator", "tokenize_prompts", "make_sft_batch",
]
