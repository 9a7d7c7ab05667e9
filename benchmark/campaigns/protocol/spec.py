"""A protocol file: its schema (:class:`Protocol`), and the file read, validated and hashed
(:func:`load_protocol`, :class:`LoadedProtocol`)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from benchmark.core.yaml_strict import strict_safe_load
from benchmark.core.errors import UsageError

BEST = "best"   # loss_study.archs entry standing for the best tuned architecture
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RescoreSpec(_Strict):
    """After a study: its ``top_k`` complete trials each retrain with ``seeds`` new seeds (validation
    only) and the best mean of trial value and retrainings is the configuration the finals train."""
    top_k: int
    seeds: int

    @field_validator("top_k", "seeds")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be >= 1")
        return v


#: ``second_sampler.archs``: the three best architectures by rescored validation value and the comparator
TOP3_AND_COMPARATOR = "top3_and_comparator"


class SecondSamplerSpec(_Strict):
    """The studies of ``archs`` run again with the sampler seed + ``seed`` (study name suffix
    ``-s<seed>``), rescored and trained like the first: the spread the search itself adds."""
    seed: int = 1
    archs: Literal["top3_and_comparator"] | list[str] = TOP3_AND_COMPARATOR

    @field_validator("seed")
    @classmethod
    def _nonzero(cls, v):
        if v < 1:
            raise ValueError("must be >= 1 (0 is the first study's sampler)")
        return v


class TuningSpec(_Strict):
    n_trials: int
    epochs: int
    #: ``successive_halving``: Optuna's SuccessiveHalvingPruner, first rung after ``min_epochs``
    #: epochs, each rung keeping 1/``reduction_factor`` of the trials
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    min_epochs: int = 1
    reduction_factor: int = 3
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: int = 0
    #: TPE's random start-up trials (None: Optuna's default, 10)
    startup_trials: Optional[int] = None
    #: "sampled": every trial is drawn; "default_optimiser": trial 0 is the preset's own optimiser
    #: settings (the default rows' optimiser, learning rate and batch; ``search_space.default_optimiser_params``),
    #: the architecture's knobs drawn, so a study has always tried what the default rows train
    #: "default_recipe": trial 0 is the architecture's default recipe in full: the default optimiser
    #: settings and its own search parameters at their defaults (``search_space.default_recipe``),
    #: never pruned (the default row's reference)
    first_trial: Literal["sampled", "default_optimiser", "default_recipe"] = "sampled"
    #: loss trained during tuning (at its default settings)
    loss: str = "dice_bce"
    #: config overrides for every trial (after the suggestions: they win)
    overrides: list[str] = []
    #: "search": the architectures' size knobs (widths, depths) are tuned with the rest; "preset":
    #: every knob the preset sizes (the architecture's ``preset_kwargs``) is held at the preset's
    #: value, so the study tunes training and regularisation of the network the default runs train
    #: (on two cores the size knobs made a unet3d trial 14x dearer than the protocol's estimate)
    size: Literal["search", "preset"] = "search"
    #: what a trial maximises and reports to the pruner each epoch: the thresholded validation Dice,
    #: or the soft Dice of the probabilities, which moves before any voxel crosses the threshold (in
    #: 6-epoch cpu trials most configurations still scored a thresholded Dice of 0 at the epoch the
    #: pruner first looks, so ties decided the pruning and gave TPE nothing to rank)
    metric: Literal["val_dice", "val_soft_dice"] = "val_dice"
    #: "compressed": a trial's learning-rate schedule spans its ``epochs``; "truncated": a trial is
    #: the first ``epochs`` epochs of the final runs' schedule (``train.stop_after_epochs``), so it
    #: is the beginning of the run the final seeds train and its learning rate is still high where
    #: it stops (a compressed 6-epoch cosine anneals before a U-Net at the default rate has learnt
    #: to predict anything; the same settings score 0.3 at epoch 6 of the 20-epoch schedule)
    #: "full": every trial trains the final runs' whole schedule (``tuning.epochs`` is then ignored
    #: for the budget: a multi-fidelity pruner stops the weak trials early), so the chosen
    #: configuration has trained as long as the finals will
    schedule: Literal["compressed", "truncated", "full"] = "compressed"
    #: top-k re-scoring of each study before its finals (None: the best trial, as before)
    rescore: Optional[RescoreSpec] = None
    #: a second study per chosen architecture with another sampler seed (None: none)
    second_sampler: Optional[SecondSamplerSpec] = None

    @field_validator("min_epochs", "reduction_factor")
    @classmethod
    def _rung(cls, v, info):
        if v < (2 if info.field_name == "reduction_factor" else 1):
            raise ValueError("must be >= 2" if info.field_name == "reduction_factor" else "must be >= 1")
        return v

    def pruner_name(self) -> str:
        """The pruner as ``benchmark.campaigns.tune.make_pruner`` reads it."""
        if self.pruner == "successive_halving":
            return f"successive_halving:{self.min_epochs}:{self.reduction_factor}"
        return self.pruner

    @field_validator("n_trials", "epochs")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class FinalSpec(_Strict):
    seeds: int
    #: training epochs of the final runs (default: the preset's)
    epochs: Optional[int] = None
    overrides: list[str] = []


class BudgetSpec(_Strict):
    """The training budget in data: ``train.samples_per_epoch`` for every trial, final, default,
    rescore and recipe-control run of the protocol (steps per epoch follow the batch size)."""
    samples_per_epoch: int

    @field_validator("samples_per_epoch")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    def overrides(self) -> list[str]:
        return ["train.steps_per_epoch=null", f"train.samples_per_epoch={self.samples_per_epoch}"]


class RecipeControlSpec(_Strict):
    """Controls for recipe luck: ``shared`` trains every architecture with the best shared-space
    recipe across all studies (``final.seeds`` seeds); ``swap_top`` trains each of the top
    architectures and the comparator with each other one's shared-space recipe (``swap_seeds``)."""
    shared: bool = False
    swap_top: int = 0
    swap_seeds: int = 1

    @field_validator("swap_top", "swap_seeds")
    @classmethod
    def _not_negative(cls, v):
        if v < 0:
            raise ValueError("must be >= 0")
        return v


class DefaultsSpec(_Strict):
    #: seeds of the default-settings section; 0 leaves it out
    seeds: int = 0
    references: bool = True


class LossStudySpec(_Strict):
    archs: list[str]
    losses: list[str]
    seeds: int
    #: ``best`` is chosen among the architectures whose loss study is estimated (from
    #: ``seconds_per_epoch``) to cost at most this many hours; declared before any result, so
    #: the cap cannot be fitted to the ranking. None: no cap.
    best_max_hours: Optional[float] = None


class Protocol(_Strict):
    name: str
    version: int
    preset: str
    #: what is searched: the shared optimiser space plus each architecture's own space
    search_space: Literal["optimiser+architecture"] = "optimiser+architecture"
    architectures: list[str]
    #: the architecture every other is compared with (the leaderboard's comparator, tag protocol.comparator)
    reference_arch: str = "unet3d"
    tuning: TuningSpec
    final: FinalSpec
    defaults: DefaultsSpec = DefaultsSpec()
    loss_study: Optional[LossStudySpec] = None
    #: the epoch's budget in samples (None: the preset's steps per epoch, as up to v6)
    budget: Optional[BudgetSpec] = None
    #: shared-recipe and recipe-swap controls (None: none)
    recipe_control: Optional[RecipeControlSpec] = None
    #: measured training seconds per epoch at the preset (for ``status``'s cost estimate only)
    seconds_per_epoch: dict[str, float] = {}
    #: where ``seconds_per_epoch`` was measured (machine, commit); shown by ``status``
    seconds_per_epoch_source: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _NAME.match(v):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (it names Optuna studies)")
        return v

    @model_validator(mode="after")
    def _rules(self):
        from benchmark.run.config import PRESETS
        if self.version < 1:
            raise ValueError("version must be >= 1")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        min_seeds = 2 if self.preset == "smoke" else 3   # the smoke preset is for tests only
        if self.final.seeds < min_seeds:
            raise ValueError(f"final.seeds must be >= {min_seeds}")
        if self.loss_study and self.loss_study.seeds < min_seeds:
            raise ValueError(f"loss_study.seeds must be >= {min_seeds}")
        if not self.architectures:
            raise ValueError("architectures is empty")
        if self.reference_arch not in self.architectures:
            raise ValueError(f"reference_arch {self.reference_arch!r} is not in architectures")
        if self.loss_study:
            if self.tuning.loss not in self.loss_study.losses:
                raise ValueError(f"loss_study.losses must include the tuning loss {self.tuning.loss!r} "
                                 f"(every other loss is compared with it)")
            stray = [a for a in self.loss_study.archs if a != BEST and a not in self.architectures]
            if stray:
                raise ValueError(f"loss_study.archs {stray} are not in architectures")
        t = self.tuning
        if (t.rescore or t.second_sampler or self.recipe_control) and t.schedule != "full":
            raise ValueError("tuning.rescore, tuning.second_sampler and recipe_control need tuning.schedule: full "
                             "(a rescored or swapped configuration trains the finals' schedule)")
        ss = t.second_sampler
        if ss and isinstance(ss.archs, list):
            stray = [a for a in ss.archs if a not in self.architectures]
            if stray:
                raise ValueError(f"tuning.second_sampler.archs {stray} are not in architectures")
        return self


@dataclass
class LoadedProtocol:
    spec: Protocol
    path: Path
    sha: str

    @property
    def tags(self) -> dict[str, str]:
        return {"protocol.name": self.spec.name, "protocol.version": str(self.spec.version),
                "protocol.sha": self.sha, "protocol.comparator": self.spec.reference_arch}

    def study_name(self, arch: str, sampler_offset: int = 0) -> str:
        """``<name>-v<version>-<arch>``; a second-sampler study adds ``-s<offset>``."""
        return f"{self.spec.name}-v{self.spec.version}-{arch}" + (f"-s{sampler_offset}" if sampler_offset else "")


def load_protocol(path: str | Path) -> LoadedProtocol:
    """Read, parse (``yaml.safe_load``, refusing a key written twice) and validate a protocol file;
    names are checked against
    the registries and canonicalised."""
    from architectures import architecture_entry
    from benchmark.losses import loss_entry
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"protocol file not found: {p}")
    raw = p.read_bytes()
    try:
        data = strict_safe_load(raw.decode("utf-8", errors="replace"))
    except yaml.YAMLError as e:
        raise UsageError(f"protocol file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"protocol file {p} must hold a mapping")
    try:
        spec = Protocol.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "protocol"
        raise UsageError(f"protocol file {p}: {loc}: {err['msg']}") from None
    spec.architectures = list(dict.fromkeys(architecture_entry(a).name for a in spec.architectures))
    ss = spec.tuning.second_sampler
    if ss and isinstance(ss.archs, list):
        ss.archs = list(dict.fromkeys(architecture_entry(a).name for a in ss.archs))
    spec.reference_arch = architecture_entry(spec.reference_arch).name
    spec.tuning.loss = loss_entry(spec.tuning.loss).name
    if spec.loss_study:
        spec.loss_study.losses = list(dict.fromkeys(loss_entry(x).name for x in spec.loss_study.losses))
        spec.loss_study.archs = [a if a == BEST else architecture_entry(a).name for a in spec.loss_study.archs]
    return LoadedProtocol(spec, p, hashlib.sha256(raw).hexdigest()[:12])


def final_epochs(lp: LoadedProtocol) -> int:
    """Training epochs of the final (and loss-study) runs: declared, else the preset's, else the
    run config's default (what such a run trains for)."""
    from benchmark.run.config import PRESETS, TrainConfig
    return int(lp.spec.final.epochs or PRESETS[lp.spec.preset].get("train", {}).get(
        "epochs", TrainConfig.model_fields["epochs"].default))

