from setuptools import find_packages, setup

setup(
    name="opt66b",
    version="0.1.0",
    description="Reproduce and extend Bansal et al. (ACL 2023) on any OPT checkpoint: a hand-written OPT "
                "decoder, the 16 lm-eval tasks, head/FFN importance and pruning, induction-head scores.",
    python_requires=">=3.10",
    packages=find_packages(include=["opt66b", "opt66b.*", "tasks", "tasks.*", "prune", "prune.*",
                                    "induction", "induction.*", "study", "study.*"]),
    py_modules=["run"],
    include_package_data=True,
    package_data={"opt66b": ["assets/*/*"], "tasks": ["samples/*/*"]},
    install_requires=["torch>=2.1", "safetensors>=0.4", "tokenizers>=0.15", "numpy>=1.24"],
    extras_require={
        # transformers and scipy are test-only references (logit parity, spearmanr); never imported by the core.
        "test": ["pytest>=7", "transformers>=4.40", "scipy>=1.10"],
        "plots": ["matplotlib>=3.7"],
        # `run.py data fetch` only: the 16 datasets from the Hugging Face hub (tasks/fetch.py).
        "data": ["datasets>=2.14"],
    },
)
