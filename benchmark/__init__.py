"""lidc-bench: the engine (CLI, config, data, training, evaluation, tracking).

Architectures live in the sibling top-level package ``architectures``; losses in
``benchmark.losses``. Dataset definitions and split files live in the ``datasets/``
folder at the repository root (deliberately not a Python package: a top-level
``datasets`` package would shadow Hugging Face's).
"""
from pathlib import Path

__version__ = "0.1.0"

#: Repository root (where ``mlflow.yaml``, ``datasets/`` and ``leaderboards/`` live).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
