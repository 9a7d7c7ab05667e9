"""Typed run configuration, presets and command-line overrides.

A run is fully described by one :class:`RunConfig`. It is built from a preset
(``smoke`` / ``cpu`` / ``paper``), then ``--arch``/``--loss`` and ``key=value`` overrides
(``train.epochs=5 optim.lr=3e-4 model.kwargs.base_channels=16``), and the resolved result
is logged to MLflow as ``config.yaml`` plus flattened params, so any run can be re-created
with ``bench run --config config.yaml``.

Geometry convention: user-facing sizes are written (x, y, z) as in the paper
(64x64x32); tensors are (z, y, x) = (D, H, W). ``DataConfig.patch_zyx`` converts.
All three presets cover the same field of view: 80x80x40 mm stored crops, 64x64x32 mm patches.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_serializer, model_validator)

from benchmark.core.errors import UsageError
from benchmark.core.yaml_strict import strict_safe_load

#: seeds feed numpy's legacy RNG and torch generators, which take 32-bit seeds
SEED_LIMIT = 2 ** 32
#: the voxel sizes (mm) a run may resample to, and the largest crop or patch edge (voxels)
SPACING_RANGE_MM = (0.25, 5.0)
MAX_SIZE_VOXELS = 512


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    #: the dataset adapter (benchmark.data.datasets); its sources and ground truths are the
    #: allowed values of the two fields below. Left out of the dumped config while it is the
    #: default (see _omit_default_dataset).
    dataset: str = "lidc"
    #: LIDC: phantom or dicom
    source: str = "phantom"
    #: LIDC: staple or consensus
    ground_truth: str = "staple"
    spacing_mm: float = 1.0
    crop_xyz: tuple[int, int, int] = (80, 80, 40)
    patch_xyz: tuple[int, int, int] = (64, 64, 32)
    #: cap on nodules per split (smoke preset); None = all
    max_nodules: Optional[dict[str, int]] = None
    phantom_seed: int = 0
    #: HU window mapped to [0, 1] before normalisation (see datasets/lidc/CARD.md)
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    # How batches are made, not what they are: every setting gives the same batches
    # (tests/test_loader.py), so these two are left out of the logged config, the fingerprints
    # and the leaderboard's grouping (exclude=True); runs record them as tags instead.
    #: training-loader worker processes; "auto": 0 on the CPU, cores - 1 (at most 8) on a GPU
    num_workers: Union[Literal["auto"], int] = Field("auto", exclude=True)
    #: hold the training crops on the training device and cut batches there (GPU: no host work)
    on_device: bool = Field(False, exclude=True)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v):
        _adapter(v)
        return v

    @field_validator("source")
    @classmethod
    def _dataset_source(cls, v, info: ValidationInfo):
        return _one_of(v, "source", "sources", info)

    @field_validator("ground_truth")
    @classmethod
    def _dataset_ground_truth(cls, v, info: ValidationInfo):
        return _one_of(v, "ground truth", "ground_truths", info)

    @model_validator(mode="after")
    def _fits_dataset(self):
        # the field validators see the dataset of construction; this also covers a dataset
        # assigned afterwards (validate_assignment)
        adapter = _adapter(self.dataset)
        for field, allowed in (("source", adapter.sources), ("ground_truth", adapter.ground_truths)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"data.{field} {getattr(self, field)!r} is not one of dataset {self.dataset}'s "
                                 f"({', '.join(allowed)})")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_dataset(self, handler):
        # Every config made before data.dataset existed is LIDC's. Leaving the default out of
        # the dump keeps what is derived from it (config.yaml, logged params, config and
        # reference fingerprints, the suite's data keys) byte-identical for LIDC, so earlier
        # runs and results still match; any other dataset is written out and hashed.
        d = handler(self)
        if d.get("dataset") == type(self).model_fields["dataset"].default:
            del d["dataset"]
        return d

    @field_validator("spacing_mm")
    @classmethod
    def _sane_spacing(cls, v):
        # a CT voxel is 0.5-3 mm; 0.001 mm ran to FINISHED with a 0.02 mm field of view
        if not SPACING_RANGE_MM[0] <= v <= SPACING_RANGE_MM[1]:  # also refuses NaN
            raise ValueError(f"spacing_mm must be between {SPACING_RANGE_MM[0]:g} and {SPACING_RANGE_MM[1]:g} mm, "
                             f"got {v!r}")
        return v

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("num_workers must be 'auto' or >= 0")
        return v

    @field_validator("crop_xyz", "patch_xyz")
    @classmethod
    def _positive_size(cls, v):
        if any(n < 1 for n in v):
            raise ValueError(f"every size must be >= 1 voxel, got {tuple(v)}")
        if any(n > MAX_SIZE_VOXELS for n in v):
            # 2000 x 2000 x 1000 was a 158 GiB allocation before anything said no
            raise ValueError(f"every size must be <= {MAX_SIZE_VOXELS} voxels per axis, got {tuple(v)}")
        return v

    @field_validator("max_nodules")
    @classmethod
    def _positive_caps(cls, v):
        if v is not None and any(n < 1 for n in v.values()):
            raise ValueError(f"every per-split cap must be >= 1, got {v}")
        return v

    @field_validator("phantom_seed")
    @classmethod
    def _seed_range(cls, v):
        return _check_seed(v)

    @field_validator("hu_window")
    @classmethod
    def _window_order(cls, v):
        if not v[0] < v[1]:  # an empty window divides by zero in normalise_hu
            raise ValueError(f"needs low < high, got {tuple(v)}")
        return v

    @property
    def patch_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.patch_xyz
        return (z, y, x)

    @property
    def crop_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.crop_xyz
        return (z, y, x)


def _adapter(name: str):
    from benchmark.data.datasets import get_dataset
    try:
        return get_dataset(name)
    except UsageError as e:
        raise ValueError(str(e)) from None


def _one_of(value: str, what: str, attr: str, info: ValidationInfo) -> str:
    dataset = info.data.get("dataset")
    if dataset is None:     # the dataset itself was invalid: that is the error to report
        return value
    allowed = getattr(_adapter(dataset), attr)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} for dataset {dataset} (choose from {', '.join(allowed)})")
    return value


def _check_seed(v: int) -> int:
    if not 0 <= v < SEED_LIMIT:
        raise ValueError(f"must be in [0, 2**32), got {v}")
    return v


class ModelConfig(_Strict):
    arch: str = "unet3d"
    kwargs: dict[str, Any] = {}


class LossConfig(_Strict):
    name: str = "dice_bce"
    kwargs: dict[str, Any] = {}


class OptimConfig(_Strict):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["none", "cosine", "poly", "step"] = "cosine"
    warmup_epochs: int = 0
    grad_clip: Optional[float] = None

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v):
        if not v > 0:
            raise ValueError("lr must be > 0")
        return v

    @field_validator("weight_decay", "warmup_epochs")
    @classmethod
    def _not_negative(cls, v):
        if not v >= 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("grad_clip")
    @classmethod
    def _clip_positive(cls, v):
        if v is not None and not v > 0:
            raise ValueError("must be > 0 (or null for no clipping)")
        return v


class TrainConfig(_Strict):
    epochs: int = 100
    batch_size: int = 16
    #: cap on optimiser steps per epoch (None = one pass over the training split)
    steps_per_epoch: Optional[int] = None
    #: the epoch's budget in patches instead of steps (exclusive with ``steps_per_epoch``): the cap
    #: is ceil(samples_per_epoch / batch_size) steps, so a tuned batch size changes the step count,
    #: not the data seen (at a fixed step count batch 16 saw 4x the patches of batch 4). Still
    #: capped at one pass over the training split, like ``steps_per_epoch``.
    samples_per_epoch: Optional[int] = None
    early_stopping_patience: int = 20
    amp: bool = True                 # only takes effect on CUDA
    seed: int = 0
    deterministic: bool = True
    channels_last: bool = False
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_every: int = 1
    #: stop after this many epochs of the ``epochs``-long schedule (None: run it all). A tuning
    #: trial that is the beginning of the final run, learning rate included (a protocol's
    #: ``tuning.schedule: truncated``)
    stop_after_epochs: Optional[int] = None

    @field_validator("epochs", "batch_size", "val_every")
    @classmethod
    def _at_least_one(cls, v):
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("steps_per_epoch", "samples_per_epoch", "stop_after_epochs")
    @classmethod
    def _optional_at_least_one(cls, v, info):
        # 0 or a negative cap would give a run that "finishes" without one optimiser step
        if v is not None and v < 1:
            unset = {"steps_per_epoch": "one pass over the training split",
                     "samples_per_epoch": "one pass over the training split", "stop_after_epochs": "every epoch"}
            raise ValueError(f"must be >= 1 (or null for {unset[info.field_name]})")
        return v

    @model_validator(mode="after")
    def _one_epoch_budget(self):
        if self.steps_per_epoch is not None and self.samples_per_epoch is not None:
            raise ValueError("give train.steps_per_epoch or train.samples_per_epoch, not both "
                             "(set the other to null)")
        return self

    def max_steps(self) -> Optional[int]:
        """The cap on steps per epoch: ``steps_per_epoch``, or the steps ``samples_per_epoch``
        takes at this batch size (None: one pass over the training split)."""
        if self.samples_per_epoch is not None:
            return -(-self.samples_per_epoch // self.batch_size)
        return self.steps_per_epoch

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v):
        return _check_seed(v)


class EvalConfig(_Strict):
    threshold: float = 0.5
    nsd_tolerance_mm: float = 1.0
    latency_repeats: int = 10
    overlays: bool = True

    @field_validator("threshold")
    @classmethod
    def _threshold_inside(cls, v):
        if not 0 < v < 1:
            raise ValueError("must be strictly between 0 and 1")
        return v

    @field_validator("nsd_tolerance_mm")
    @classmethod
    def _tolerance(cls, v):
        if not v >= 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("latency_repeats")
    @classmethod
    def _repeats(cls, v):
        if v < 1:  # checked here, not after hours of training
            raise ValueError("must be >= 1")
        return v


class RunConfig(_Strict):
    preset: str = "paper"
    name: Optional[str] = None
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _patch_fits_crop(self):
        # Checked on the whole run, not in DataConfig: `bench data build --spacing` changes the
        # crop of a data config whose patch it never uses.
        crop, patch = self.data.crop_xyz, self.data.patch_xyz
        if any(p > c for p, c in zip(patch, crop)):
            raise ValueError(f"data.patch_xyz {tuple(patch)} is larger than data.crop_xyz {tuple(crop)} "
                             f"the patches are cut from")
        return self

    def flat(self) -> dict[str, Any]:
        return flatten(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def fingerprint(self) -> str:
        """Hash of everything that defines the experiment (not its name)."""
        return self._hash(with_patience=True)

    def budget_fingerprint(self) -> str:
        """The fingerprint without ``train.early_stopping_patience``: two configs that differ
        only there train identically until early stopping fires, so a run never cut short by
        it (``ran_full_budget``) stands for every config with the same budget fingerprint and
        a patience at least as large (``bench suite`` and the leaderboard use this)."""
        return self._hash(with_patience=False)

    def _hash(self, with_patience: bool) -> str:
        d = without_unset_additions(self.model_dump(mode="json"))
        d.pop("name", None)
        if not with_patience:
            d["train"].pop("early_stopping_patience", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: fields added after runs were recorded, with their default: (section, field) -> default
_ADDED_FIELDS = {("train", "stop_after_epochs"): None, ("train", "samples_per_epoch"): None}


def without_unset_additions(d: dict) -> dict:
    """A config dict (nested, as dumped or as a run logged it) without the fields added after runs
    were recorded while they hold their default. Fingerprints and the leaderboard's grouping use
    it, so a run that trains every epoch is the run it always was and matches one logged before
    ``train.stop_after_epochs`` existed."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for (section, name), default in _ADDED_FIELDS.items():
        if isinstance(out.get(section), dict) and out[section].get(name, default) == default:
            out[section].pop(name, None)
    return out


def ran_full_budget(stopped_early_tag: Optional[str], epochs_completed: Optional[float], epochs: Any) -> bool:
    """Did early stopping leave a finished run alone? From its MLflow record: the
    ``stopped_early`` tag, the ``epochs_completed`` metric and the planned ``train.epochs``
    (stopping on the last epoch cuts nothing short)."""
    if stopped_early_tag == "False":
        return True
    try:
        return epochs_completed is not None and float(epochs_completed) == float(epochs)
    except (TypeError, ValueError):
        return False


PRESETS: dict[str, dict[str, Any]] = {
    # seconds: a handful of nodules at 4 mm, 16x16x8 patches; for tests
    "smoke": {
        "data": {"spacing_mm": 4.0, "crop_xyz": (20, 20, 10), "patch_xyz": (16, 16, 8),
                 "max_nodules": {"train": 16, "val": 4, "test": 6}},
        "train": {"epochs": 2, "batch_size": 4, "early_stopping_patience": 5},
        "optim": {"lr": 1e-3},
        "eval": {"latency_repeats": 2},
    },
    # minutes on two CPU cores: 2 mm voxels, 32x32x16 patches over the same field of view
    "cpu": {
        "data": {"spacing_mm": 2.0, "crop_xyz": (40, 40, 20), "patch_xyz": (32, 32, 16)},
        # Patience = epochs, i.e. no early stopping: the budget is short and every architecture
        # gets all of it. With patience 6, slow starters (val Dice 0 for the first epochs while
        # the loss still falls) were stopped at epoch 7 by the luck of the seed (bixnas seed 1).
        # The best-validation checkpoint is still the one evaluated.
        "train": {"epochs": 20, "batch_size": 8, "steps_per_epoch": 20, "early_stopping_patience": 20,
                  "channels_last": True},  # 1.6x faster on CPUs (docs/performance.md)
        "optim": {"lr": 3e-3},
        "eval": {"latency_repeats": 5},
    },
    # the paper: 1 mm, 64x64x32, for a GPU
    "paper": {
        "data": {"spacing_mm": 1.0, "crop_xyz": (80, 80, 40), "patch_xyz": (64, 64, 32)},
        "train": {"epochs": 100, "batch_size": 16, "early_stopping_patience": 20},
        "optim": {"lr": 1e-3},
    },
}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def deep_update(base: dict, upd: dict) -> dict:
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def default_preset() -> tuple[str, str]:
    """``paper`` where CUDA is available, ``cpu`` otherwise; returns (preset, reason)."""
    try:
        import torch
        if torch.cuda.is_available():
            return "paper", "CUDA is available"
    except Exception:  # pragma: no cover
        pass
    return "cpu", "no CUDA device"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UsageError(f"override {item!r} is not of the form key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise UsageError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(d: dict, path: list[str], value: Any, item: str):
    cur = d
    for i, p in enumerate(path[:-1]):
        if p not in cur or not isinstance(cur[p], dict):
            # free-form dicts (model.kwargs, loss.kwargs) may grow new keys
            if isinstance(cur, dict) and (i > 0 and path[i - 1] == "kwargs" or p in cur):
                raise UsageError(f"override {item!r}: {'.'.join(path[:i + 1])} is not a section")
            cur[p] = {}
        cur = cur[p]
    cur[path[-1]] = value


def build_config(preset: Optional[str] = None, overrides: list[str] | None = None,
                 base: dict | None = None, **top: Any) -> RunConfig:
    """Resolve a RunConfig: defaults < preset < config file (base) < top-level < overrides."""
    if preset is None:
        preset = (base or {}).get("preset") or default_preset()[0]
    if preset not in PRESETS:
        close = [p for p in PRESETS if p.startswith(preset[:1])]
        raise UsageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})"
                         + (f"; did you mean {close[0]}?" if close else ""))
    d = RunConfig().model_dump(mode="python")
    deep_update(d, json.loads(json.dumps(PRESETS[preset])))
    if base:
        deep_update(d, base)
    d["preset"] = preset
    for k, v in top.items():
        if v is not None:
            _set_path(d, k.split("."), v, k)
    valid_roots = set(RunConfig.model_fields)
    for item in overrides or []:
        path, value = parse_override(item)
        if path[0] not in valid_roots:
            raise UsageError(f"override {item!r}: unknown section {path[0]!r} (sections: {', '.join(sorted(valid_roots))})")
        _set_path(d, path, value, item)
    _apply_arch_preset(d, preset)
    return validate_config(d)


def validate_config(d: dict, where: str = "") -> RunConfig:
    """``RunConfig`` from a plain dict, a validation problem as one UsageError line."""
    try:
        return RunConfig.model_validate(d)
    except ValidationError as e:
        raise UsageError(f"{where}{validation_message(e)}") from None


def validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"invalid config value for {loc}: {msg}" if loc else f"invalid config: {msg}"


def _apply_arch_preset(d: dict, preset: str) -> None:
    """Resolve the architecture's name and merge its own size for this preset (``preset_kwargs``
    declared beside its code, e.g. a narrower unet3d for ``cpu``) under the user's
    ``model.kwargs``; the result is part of the resolved, logged config."""
    from architectures import ARCHITECTURES, preset_kwargs
    # the one place a run's architecture name is resolved (an alias to its canonical name, an
    # unknown name to one line with the closest names): everything after reads cfg.model.arch
    entry = ARCHITECTURES.entry(d["model"]["arch"])
    d["model"]["arch"] = entry.name
    sized = preset_kwargs(entry.name, preset)
    d["model"]["kwargs"] = {**sized, **(d["model"].get("kwargs") or {})}


def load_config_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"config file not found: {p}")
    try:
        data = strict_safe_load(p.read_text())      # a key written twice is an error, not the last one
    except yaml.YAMLError as e:
        raise UsageError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data
