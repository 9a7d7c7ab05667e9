"""The search space of a tuning trial, and the trial's point as config overrides (and back).

A trial searches the shared optimiser space (``common_space``: the same ranges for every
architecture) plus the ``search_space(trial)`` declared beside each architecture's and loss's
code. ``ConstrainedTrial`` applies ``bench tune --fix NAME=VALUE`` / ``--narrow NAME=LOW:HIGH``
(``parse_fix``, ``parse_narrow``), and ``declared_parameters`` lists the names a trial can
suggest, so that a constraint on a name no trial uses is refused (``check_constraints``).

Replay: a trial records the exact ``key=value`` list it trained with (``OVERRIDES_ATTR``);
``replay_overrides`` gives it back, so a replayed config has the trial's fingerprint.
"""
from __future__ import annotations

from typing import Any, Optional

from benchmark.core.errors import UsageError


# ---------------------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------------------
class ConstrainedTrial:
    """Wraps an Optuna trial so the CLI can fix or narrow any declared parameter."""

    def __init__(self, trial, fixed: dict[str, Any], narrowed: dict[str, Any]):
        self._trial, self._fixed, self._narrowed = trial, fixed, narrowed

    def __getattr__(self, name):
        return getattr(self._trial, name)

    def suggest_float(self, name, low, high, *, log=False, step=None):
        if name in self._fixed:
            return float(self._fixed[name])
        if name in self._narrowed:
            low, high = self._narrowed[name]
        return self._trial.suggest_float(name, low, high, log=log, step=step)

    def suggest_int(self, name, low, high, *, log=False, step=1):
        if name in self._fixed:
            return int(self._fixed[name])
        if name in self._narrowed:
            low, high = (int(v) for v in self._narrowed[name])
        return self._trial.suggest_int(name, low, high, log=log, step=step)

    def suggest_categorical(self, name, choices):
        if name in self._fixed:
            return self._fixed[name]
        if name in self._narrowed:
            choices = self._narrowed[name]
        return self._trial.suggest_categorical(name, list(choices))



BATCH_CHOICES = {"smoke": [2, 4], "cpu": [4, 8, 16], "paper": [4, 8, 16]}


#: learning-rate range per optimiser: SGD (momentum 0.9) works at rates ten times Adam's, so one
#: shared range left most SGD draws unable to learn in a short trial (cpu protocol v4: every
#: SGD trial of unet3d at <= 3.5e-3 ended at Dice 0)
LR_RANGES = {"adam": (1e-4, 1e-2), "adamw": (1e-4, 1e-2), "sgd": (1e-3, 1e-1)}
WEIGHT_DECAY_RANGE = (1e-6, 1e-3)


def common_space(trial, preset: str) -> dict[str, Any]:
    """Training knobs every architecture is tuned over (same budget, same ranges). The learning
    rate is conditional on the optimiser: ``optim.lr`` for Adam and AdamW, ``optim.sgd_lr`` for
    SGD, each over its own range (``LR_RANGES``)."""
    optimizer = trial.suggest_categorical("optim.optimizer", ["adam", "adamw", "sgd"])
    lr_name = "optim.sgd_lr" if optimizer == "sgd" else "optim.lr"
    return {
        "optim.lr": trial.suggest_float(lr_name, *LR_RANGES[optimizer], log=True),
        "optim.weight_decay": trial.suggest_float("optim.weight_decay", *WEIGHT_DECAY_RANGE, log=True),
        "optim.optimizer": optimizer,
        "train.batch_size": trial.suggest_categorical("train.batch_size", BATCH_CHOICES.get(preset, [4, 8])),
    }


def default_optimiser_params(arch: str, preset: str) -> dict[str, Any]:
    """The preset's own optimiser settings in the shared space's parameter names: the trial a
    study can start from (a protocol's ``tuning.first_trial: default_optimiser``). A weight
    decay of 0 becomes the range's floor (1e-6: no measurable difference in 400 steps)."""
    from benchmark.run.config import build_config
    cfg = build_config(preset, [], **{"model.arch": arch})
    o = cfg.optim
    lr_name = "optim.sgd_lr" if o.optimizer == "sgd" else "optim.lr"
    return {"optim.optimizer": o.optimizer, lr_name: o.lr,
            "optim.weight_decay": max(o.weight_decay, WEIGHT_DECAY_RANGE[0]),
            "train.batch_size": cfg.train.batch_size}


class _DefaultRecipeProbe:
    """A stand-in trial answering each ``arch.<kwarg>`` parameter with the network's default:
    ``held`` (the preset's size, fixed by the study anyway: not enqueued), else the value the
    default run's config builds it with (``preset_kwargs`` merged into ``model.kwargs``), else the
    registry's ``search_defaults`` (the constructor's own default). ``params`` keeps what to enqueue."""

    def __init__(self, arch: str, held: dict, kwargs: dict, defaults: dict):
        self.arch, self.held, self.kwargs, self.defaults = arch, held, kwargs, defaults
        self.params: dict[str, Any] = {}

    def _answer(self, name: str):
        if name in self.held:
            return self.held[name]
        key = name.removeprefix("arch.")
        for source in (self.kwargs, self.defaults):
            if key in source:
                self.params[name] = source[key]
                return source[key]
        raise UsageError(f"{self.arch}'s search parameter {name} has no default: declare it in the "
                         f"architecture's search_defaults (architectures/__init__.py)")

    def suggest_categorical(self, name, choices):
        return self._answer(name)

    def suggest_float(self, name, low, high, *, log=False, step=None):
        return self._answer(name)

    def suggest_int(self, name, low, high, *, log=False, step=1):
        return self._answer(name)


def default_recipe(arch: str, preset: str, held: dict) -> tuple[dict[str, Any], list[str]]:
    """The architecture's default recipe in full as a trial to enqueue (``tuning.first_trial:
    default_recipe``): the default optimiser settings (``default_optimiser_params``) and every
    parameter of the architecture's own search space at its default (``_DefaultRecipeProbe``);
    ``held`` parameters are left to the study's fixed values. Also the overrides the trial adds
    after its suggestions, so that it trains the default run's exact settings where the space's
    range cannot hold them (a weight decay of 0 under a log range: the parameter records the
    floor, the run trains 0)."""
    from architectures import architecture_entry
    from benchmark.run.config import build_config
    params = default_optimiser_params(arch, preset)
    cfg = build_config(preset, [], **{"model.arch": arch})
    entry = architecture_entry(arch)
    if entry.search_space:
        probe = _DefaultRecipeProbe(entry.name, held, dict(cfg.model.kwargs), entry.meta.get("search_defaults", {}))
        entry.search_space(probe)
        params.update(probe.params)
    exact = [] if cfg.optim.weight_decay >= WEIGHT_DECAY_RANGE[0] else \
        [f"optim.weight_decay={_yaml_value(cfg.optim.weight_decay)}"]
    return params, exact


def suggest_overrides(trial, arch: str, loss: str, preset: str, loss_space: bool = True) -> list[str]:
    """All suggested values as config overrides (``optim.lr=...``, ``model.kwargs.x=...``).
    ``loss_space=False`` leaves the loss at its defaults (the protocol tunes architecture and
    optimiser only, so that its loss study compares losses on equal terms)."""
    values = suggested_values(trial, arch, loss, preset, loss_space)
    return [f"{k}={_yaml_value(v)}" for k, v in values.items()]


def suggested_values(trial, arch: str, loss: str, preset: str, loss_space: bool = True) -> dict[str, Any]:
    """The trial's suggestions by config field: the shared optimiser space, the architecture's
    ``search_space`` (``model.kwargs.*``) and, with ``loss_space``, the loss's (``loss.kwargs.*``)."""
    from architectures import architecture_entry
    from benchmark.losses import loss_entry
    out = common_space(trial, preset)
    a = architecture_entry(arch)
    if a.search_space:
        out.update({f"model.kwargs.{k}": v for k, v in a.search_space(trial).items()})
    lo = loss_entry(loss)
    if loss_space and lo.search_space:
        out.update({f"loss.kwargs.{k}": v for k, v in lo.search_space(trial).items()})
    return out



def _yaml_value(v) -> str:
    import yaml
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def parse_fix(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UsageError(f"--fix {it!r} is not NAME=VALUE")
        k, v = it.split("=", 1)
        out[k] = _yaml_arg("--fix", it, v)
    return out


def _yaml_arg(option: str, item: str, text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{option} {item!r}: {text!r} is not a valid value ({str(e).splitlines()[0]})") from None


def parse_narrow(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UsageError(f"--narrow {it!r} is not NAME=LOW:HIGH or NAME=a,b")
        k, v = it.split("=", 1)
        if ":" in v:
            lo, hi = (_yaml_arg("--narrow", it, x) for x in v.split(":", 1))
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
                raise UsageError(f"--narrow {it!r}: need numeric LOW < HIGH")
            out[k] = (lo, hi)
        else:
            out[k] = [_yaml_arg("--narrow", it, x) for x in v.split(",")]
    return out



# ---------------------------------------------------------------------------------------------
# which parameters a trial can suggest
# ---------------------------------------------------------------------------------------------
class _ParameterProbe:
    """A stand-in trial that records the name of every parameter a search space asks for.
    Numbers are answered with the range's low end; a categorical's answer is the choice index
    ``path`` gives for it (categoricals numbered in the order they are asked; 0 past its end),
    and ``asked`` keeps how many choices each had, so the caller can try the other branches."""

    def __init__(self, path: list[int]):
        self.path, self.asked, self.names = path, [], set()

    def suggest_categorical(self, name, choices):
        choices = list(choices)
        position = len(self.asked)
        self.asked.append(len(choices))
        self.names.add(name)
        return choices[self.path[position] if position < len(self.path) else 0]

    def suggest_float(self, name, low, high, *, log=False, step=None):
        self.names.add(name)
        return float(low)

    def suggest_int(self, name, low, high, *, log=False, step=1):
        self.names.add(name)
        return int(low)


#: search spaces with more categorical branches than this are not enumerated (none comes near:
#: the largest, bionet with residual_moment, has 108)
MAX_BRANCHES = 20000


def declared_parameters(arch: str, loss: str, preset: str, loss_space: bool = True) -> Optional[set[str]]:
    """Every parameter name a trial of ``arch`` with ``loss`` can suggest, over every branch of
    its categorical choices (``common_space`` names the learning rate after the optimiser drawn,
    so both names count). The spaces branch only on categorical answers (numeric answers are not
    varied). None when there are more than ``MAX_BRANCHES`` branches to visit."""
    names: set[str] = set()
    todo: list[list[int]] = [[]]
    for _ in range(MAX_BRANCHES):
        if not todo:
            return names
        path = todo.pop()
        probe = _ParameterProbe(path)
        suggested_values(probe, arch, loss, preset, loss_space)
        names |= probe.names
        # every branch that differs from this run first at a categorical asked beyond `path`
        taken = path + [0] * (len(probe.asked) - len(path))
        for position in range(len(path), len(probe.asked)):
            todo += [taken[:position] + [choice] for choice in range(1, probe.asked[position])]
    return None if todo else names


def check_constraints(fixed: dict, narrowed: dict, declared: Optional[set[str]], what: str) -> None:
    """Refuse a ``--fix`` or ``--narrow`` of a parameter no trial suggests (``declared``, from
    ``declared_parameters``; None: not known, nothing refused): it would be ignored, silently."""
    if declared is None:
        return
    unknown = [f"--fix {k}" for k in fixed if k not in declared] + \
        [f"--narrow {k}" for k in narrowed if k not in declared]
    if unknown:
        raise UsageError(f"no such search parameter: {', '.join(unknown)}; the trials of {what} use "
                         f"{', '.join(sorted(declared))}")


# ---------------------------------------------------------------------------------------------
# exact replay
# ---------------------------------------------------------------------------------------------
#: trial user attribute holding the exact ``key=value`` list the trial's run was built from
OVERRIDES_ATTR = "overrides"
#: user attribute of an enqueued trial: overrides it adds after its suggestions (``default_recipe``)
RECIPE_ATTR = "recipe_overrides"
#: user attribute of an enqueued trial the pruner must not stop (the default recipe: see ``tune``)
NEVER_PRUNE_ATTR = "never_prune"


def trial_run_overrides(trial, meta: dict, base_overrides: list[str]) -> list[str]:
    """The overrides a trial trains with: its suggestions, those an enqueued trial carries
    (``RECIPE_ATTR``), then the study's fixed overrides (which win, as they come last)."""
    carried = list((getattr(trial, "user_attrs", None) or {}).get(RECIPE_ATTR, []))
    return suggest_overrides(trial, meta["arch"], meta["loss"], meta["preset"],
                             loss_space=meta.get("loss_space", True)) + carried + list(base_overrides)


def config_from_overrides(meta: dict, overrides: list[str]):
    """The RunConfig a trial (or its replay) trains: preset + arch + loss + overrides."""
    from benchmark.run.config import build_config
    return build_config(meta["preset"], list(overrides), **{"model.arch": meta["arch"], "loss.name": meta["loss"]})


def replay_overrides(trial, meta: dict) -> list[str]:
    """The overrides that rebuild ``trial``'s own config exactly.

    Trials record their list (``OVERRIDES_ATTR``). For trials from before that record, the
    search space is re-run on the stored parameter values (``optuna.trial.FixedTrial``), so
    derived values (unetr's width preset -> hidden_size and num_heads, Tversky's alpha = 1 -
    beta) come out as they did in the trial; the study's own fixed overrides are then not known
    and must be given again."""
    import optuna
    stored = trial.user_attrs.get(OVERRIDES_ATTR)
    if stored is not None:
        return list(stored)
    fixed = {k[len("fixed."):]: v for k, v in trial.user_attrs.items() if k.startswith("fixed.")}
    params = {k: v for k, v in trial.params.items() if k not in fixed}
    ct = ConstrainedTrial(optuna.trial.FixedTrial(params, trial.number), fixed, {})
    return suggest_overrides(ct, meta["arch"], meta["loss"], meta["preset"], loss_space=meta.get("loss_space", True))

