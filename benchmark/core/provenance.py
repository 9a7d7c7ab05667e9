"""What code produced a number: a hash of the training code, recorded on every run.

Two runs of one leaderboard row may come from different commits (a suite stopped and continued
days later). That matters only if the code that trains and scores a model changed in between;
edits to documentation, the leaderboard or the command line do not. ``training_code_sha`` hashes
the syntax trees (docstrings and comments left out) of the modules that decide a run's numbers,
so the leaderboard can flag a row whose runs disagree on it, from the runs' tags alone.
"""
from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from benchmark import PROJECT_ROOT

#: the files whose code decides what a run trains and how it is scored (relative to the project)
TRAINING_CODE = ("architectures/*.py", "benchmark/run/train.py", "benchmark/run/evaluate.py", "benchmark/run/metrics.py",
                 "benchmark/run/config.py", "benchmark/losses/*.py", "benchmark/data/*.py")
#: the committed search results a registered network is built from (``dints``: its topology,
#: ``bixnas``: its genotype): a new search changes the network without touching a line of code
TRAINING_DATA = ("architectures/*.json",)
TAG = "code.training_sha"


@lru_cache(maxsize=128)
def code_fingerprint(source_text: str) -> str:
    """A module's syntax tree without docstrings: comment and doc edits keep the fingerprint.
    Memoised on the text (a pure function of it): every crop-cache lookup fingerprints the same
    few modules again (``benchmark.data.cache.code_version``, several times per run), and parsing
    them was the largest share of a protocol rerun's work."""
    tree = ast.parse(source_text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks (checkpoints and crop arrays are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def training_code_sha() -> str:
    h = hashlib.sha256()
    files = sorted({p for pattern in TRAINING_CODE for p in Path(PROJECT_ROOT).glob(pattern)})
    for path in files:
        h.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        h.update(code_fingerprint(path.read_text(encoding="utf-8")).encode())
    for path in sorted({p for pattern in TRAINING_DATA for p in Path(PROJECT_ROOT).glob(pattern)}):
        h.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        h.update(genotype_fingerprint(path.read_text(encoding="utf-8")).encode())
    return h.hexdigest()[:12]


def genotype_fingerprint(text: str) -> str:
    """A genotype file's content without its ``meta`` (the search's record: run ids, budget,
    timings), in canonical JSON: what the network is built from, not how it was found. A file
    that is not a JSON object is hashed as its bytes."""
    try:
        doc = json.loads(text)
    except ValueError:
        return hashlib.sha256(text.encode()).hexdigest()
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k != "meta"}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
