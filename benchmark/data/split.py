"""The one fixed, patient-disjoint train/val/test split (committed as datasets/lidc/split.json).

Method: every patient gets a stratum = (size bin of its largest nodule, texture class of its
least solid nodule), so that the rare ground-glass / part-solid and large-nodule patients
spread over the three sets. Patients are ordered by stratum and, within it, by a seeded
random key; the ordered list is cut into consecutive blocks of ten and each block is dealt
out by a seeded shuffle of (7 x train, 1 x val, 2 x test). This is systematic stratified
sampling: every stratum is split ~70/10/20 (exactly, up to one block boundary), and so is the
whole cohort. Validation is for model selection and tuning; test only for final evaluation.

``split_hash()`` is the sha256 of the file's bytes (16 hex digits); every run records it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import PROJECT_ROOT
from benchmark.core.errors import DataError
from benchmark.data.index import INDEX_PATH, SIZE_BINS, TEXTURE_CLASSES, index_hash, load_index

__all__ = ["SPLIT_PATH", "SPLITS", "make_split", "write_split", "load_split", "split_hash", "check_index_matches_split",
           "DEFAULT_SEED"]

SPLIT_PATH = PROJECT_ROOT / "datasets" / "lidc" / "split.json"
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 20240607
_BLOCK = ("train",) * 7 + ("val",) + ("test",) * 2

METHOD = ("patient-level systematic stratified sampling: stratum = (size bin of the patient's "
          "largest nodule, texture class of its least solid nodule); patients sorted by stratum "
          "then seeded random key; consecutive blocks of 10 dealt as a seeded shuffle of "
          "7 train / 1 val / 2 test")


def _patient_strata(index: pd.DataFrame) -> pd.DataFrame:
    tex_rank = {t: i for i, t in enumerate(TEXTURE_CLASSES)}    # ground_glass < part_solid < solid
    g = index.groupby("patient_id")
    pat = pd.DataFrame({
        "max_diameter": g["diameter_mm"].max(),
        "min_texture_rank": g["texture_class"].agg(lambda s: min(tex_rank[t] for t in s)),
    })
    from benchmark.data.index import size_bin
    pat["size_bin"] = pat["max_diameter"].map(size_bin)
    pat["texture_class"] = pat["min_texture_rank"].map(lambda r: TEXTURE_CLASSES[r])
    pat["stratum"] = pat["size_bin"] + "|" + pat["texture_class"]
    return pat.sort_index()


def make_split(index: pd.DataFrame, seed: int = DEFAULT_SEED, index_sha: str = "") -> dict:
    rng = np.random.default_rng(seed)
    pat = _patient_strata(index)
    pat["key"] = rng.permutation(len(pat))          # patients are sorted by id first
    size_rank = {b: i for i, b in enumerate(SIZE_BINS)}
    tex_rank = {t: i for i, t in enumerate(TEXTURE_CLASSES)}
    pat["s_rank"] = pat["size_bin"].map(size_rank)
    pat["t_rank"] = pat["texture_class"].map(tex_rank)
    order = pat.sort_values(["t_rank", "s_rank", "key"]).index.tolist()
    assignment: dict[str, str] = {}
    for start in range(0, len(order), len(_BLOCK)):
        deal = list(rng.permutation(_BLOCK))
        for pid, split in zip(order[start:start + len(_BLOCK)], deal):
            assignment[pid] = str(split)
    patients = {s: sorted(p for p, a in assignment.items() if a == s) for s in SPLITS}
    nodules = {nid: assignment[pid] for nid, pid in
               sorted(zip(index["nodule_id"], index["patient_id"]))}
    counts = {s: {"patients": len(patients[s]),
                  "nodules": sum(1 for v in nodules.values() if v == s)} for s in SPLITS}
    strata = {s: {k: int(v) for k, v in pat.loc[patients[s], "stratum"].value_counts().sort_index().items()}
              for s in SPLITS}
    return {"seed": seed, "method": METHOD, "fractions": {"train": 0.7, "val": 0.1, "test": 0.2},
            "index_sha256": index_sha, "counts": counts, "strata": strata,
            "patients": patients, "nodules": nodules}


def write_split(split: dict, path: Path = SPLIT_PATH) -> Path:
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(split, indent=1) + "\n")
    tmp.replace(path)
    return path


def build_split(seed: int = DEFAULT_SEED, index_path: Path = INDEX_PATH) -> dict:
    return make_split(load_index(index_path), seed=seed, index_sha=index_hash(index_path))


def load_split(path: Path = SPLIT_PATH) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} is missing: run `bench data split`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"split file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not {"patients", "nodules", "seed"} <= set(data):
        raise DataError(f"split file {path} lacks patients/nodules/seed")
    nodules, patients = data["nodules"], data["patients"]
    if not isinstance(nodules, dict) or not all(isinstance(v, str) and v in SPLITS for v in nodules.values()):
        raise DataError(f"split file {path}: 'nodules' must map each nodule id to one of {', '.join(SPLITS)}")
    if not isinstance(patients, dict) or not all(isinstance(v, list) for v in patients.values()):
        raise DataError(f"split file {path}: 'patients' must map each split to a list of patient ids")
    return data


def check_index_matches_split(index_path: Path | None = None, path: Path | None = None) -> None:
    """DataError unless the nodule index is the file the split was made from (its sha256 is
    recorded in split.json). A cut, edited or replaced nodules.csv would otherwise run on
    whichever nodules are left, and rebuild the shared crop cache from them."""
    index_path = Path(index_path or INDEX_PATH)
    path = Path(path or SPLIT_PATH)
    split = load_split(path)
    recorded = split.get("index_sha256")
    if not recorded:
        return
    current = index_hash(index_path)
    if current != recorded:
        n_now = sum(1 for _ in open(index_path, "rb")) - 1
        raise DataError(f"{index_path} changed since {path} was made from it: its sha256 is {current}, the split "
                        f"records {recorded} ({n_now} rows now, {len(split['nodules'])} nodules in the split); "
                        f"restore it (git checkout {Path(index_path).name}) or rebuild both "
                        f"(bench data index --rebuild, bench data split --rebuild)")


def split_hash(path: Path = SPLIT_PATH) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} is missing: run `bench data split`")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
