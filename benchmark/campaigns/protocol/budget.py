"""What a protocol's work costs in time: the declared estimate (``seconds_per_epoch``, scaled by
a run's batch), this machine's measured speed, and the ``--hours`` limit (:class:`TimeLimit`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from benchmark.campaigns.protocol.spec import LoadedProtocol, final_epochs

def declared_cost(lp: LoadedProtocol, arch: str, epochs: float, batch_factor: float = 1.0) -> Optional[float]:
    """Seconds ``epochs`` epochs of ``arch`` take by the protocol's declared ``seconds_per_epoch``
    (None without a figure), at ``batch_factor`` times the preset's batch."""
    sec = lp.spec.seconds_per_epoch.get(arch)
    return None if sec is None else sec * epochs * batch_factor


def cells_cost(lp: LoadedProtocol, cells: list, res) -> Optional[float]:
    """What the cells a dry run would train cost: each started (``res.ran``), resumed
    (``res.resumed``) or running (``res.elsewhere``) cell its epochs left (``epochs_left``), at
    its own batch (a tuned cell trains at its study's batch, which may be twice the preset's)."""
    left = {label: None for label, _ in res.ran} | {label: rid for label, rid in res.resumed + res.elsewhere}
    costs = [declared_cost(lp, c.arch, epochs_left(lp, left[c.label]), cell_batch_factor(lp, c))
             for c in cells if c.label in left]
    return None if None in costs else sum(costs)


def epochs_left(lp: LoadedProtocol, resume: Optional[str] = None) -> int:
    """The epochs a final, default or loss run has still to train: all of them, or, for the
    interrupted or running run ``resume``, those after its last logged epoch (an epoch is logged
    right after its checkpoint, so that is where a resume starts)."""
    epochs = final_epochs(lp)
    if not resume:
        return epochs
    from benchmark.core.tracking import client
    trained = max((m.step for m in client().get_metric_history(resume, "epoch_seconds")), default=0)
    return max(0, epochs - trained)


def trial_epochs(lp: LoadedProtocol) -> int:
    """Epochs one unpruned trial trains: the finals' schedule under ``schedule: full``."""
    t = lp.spec.tuning
    return final_epochs(lp) if t.schedule == "full" else t.epochs


def samples_factor(lp: LoadedProtocol) -> float:
    """An epoch's cost against the declared ``seconds_per_epoch`` (measured at the preset's
    steps x batch): with ``budget.samples_per_epoch`` it is the samples' ratio whatever the
    batch; else 1 (the batch factors of ``budget`` apply)."""
    from benchmark.run.config import PRESETS
    if not lp.spec.budget:
        return 1.0
    steps = PRESETS[lp.spec.preset].get("train", {}).get("steps_per_epoch")
    if not steps:
        return 1.0      # an epoch is a pass over the split: the declared figure is for that
    return lp.spec.budget.samples_per_epoch / (steps * preset_batch(lp.spec.preset))


def cell_batch_factor(lp: LoadedProtocol, c) -> float:
    """A cell's batch over the preset's: what one of its epochs costs against the preset's (an
    epoch is a fixed number of steps, so a tuned batch of 16 costs twice the preset's 8). Under
    a samples budget (``budget.samples_per_epoch``) an epoch is a fixed number of samples
    whatever the batch: the samples' ratio (``samples_factor``)."""
    if lp.spec.budget:
        return samples_factor(lp)
    return c.cfg.train.batch_size / preset_batch(lp.spec.preset)


def trial_batch_factor(lp: LoadedProtocol, which: Literal["mean", "max"] = "mean") -> float:
    """``tuning_batch_factor`` of the protocol's preset, or under a samples budget the samples'
    ratio (an epoch's cost no longer grows with the batch drawn)."""
    if lp.spec.budget:
        return samples_factor(lp)
    return tuning_batch_factor(lp.spec.preset, which)


def tuning_batch_factor(preset: str, which: Literal["mean", "max"] = "mean") -> float:
    """Tuning batch over the preset's batch: trials sample ``train.batch_size`` and an epoch is a
    fixed number of steps, so an epoch's cost grows with the batch. ``mean``: what a trial costs
    on average (the status's cost left); ``max``: what one may cost (the time limit)."""
    from benchmark.campaigns.search_space import BATCH_CHOICES
    choices = BATCH_CHOICES.get(preset, [4, 8])
    batch = max(choices) if which == "max" else sum(choices) / len(choices)
    return batch / preset_batch(preset)


def preset_batch(preset: str) -> int:
    """The batch a run of ``preset`` trains with when nothing overrides it: the preset's, else the
    run config's default. Every cost estimate scales by a run's batch over this one."""
    from benchmark.run.config import PRESETS, TrainConfig
    return int(PRESETS[preset].get("train", {}).get("batch_size", TrainConfig.model_fields["batch_size"].default))


def loss_study_hours(lp: LoadedProtocol, arch: str) -> Optional[float]:
    """Estimated two-core hours of ``arch``'s loss study (its tuning-loss cells are the final
    runs, so they cost nothing more); None without a ``seconds_per_epoch`` figure."""
    s, ls = lp.spec, lp.spec.loss_study
    epochs = final_epochs(lp)
    n_other = len([x for x in ls.losses if x != s.tuning.loss])
    sec = declared_cost(lp, arch, n_other * ls.seeds * epochs)
    return None if sec is None else sec / 3600


def loss_study_affordable(lp: LoadedProtocol, arch: str) -> bool:
    cap = lp.spec.loss_study.best_max_hours
    hours = loss_study_hours(lp, arch)
    return cap is None or hours is None or hours <= cap


def measured_seconds_per_epoch(lp: LoadedProtocol, arch: str, experiment: Optional[str] = None,
                               trials: bool = True) -> Optional[float]:
    """Median seconds per epoch of the protocol's own finished runs of ``arch`` (tags
    ``protocol.name`` and ``protocol.version``: another campaign's runs of the architecture, say a
    search's candidates trained beside other jobs, say nothing of what this protocol's take) in the
    tracking store (tuning trials included unless ``trials`` is False), each scaled to the preset's
    batch (an epoch is a fixed number of steps): what this machine takes, where the declared
    ``seconds_per_epoch`` comes from another. None without such a run. Without trials, the figure
    comes from the runs a protocol export carries, so it is the same on the machine it is
    imported to."""
    import statistics

    from benchmark.core.tracking import client, experiment_id, load_settings, search_all_runs
    settings = load_settings()
    cl = client(settings)
    preset = lp.spec.preset
    base = preset_batch(preset)
    where = (f"attributes.status = 'FINISHED' and tags.arch = '{arch}' and tags.preset = '{preset}' "
             f"and tags.`protocol.name` = '{lp.spec.name}' and tags.`protocol.version` = '{lp.spec.version}'")
    rates = []
    for r in search_all_runs(cl, [experiment_id(cl, settings, experiment)], where):
        if not trials and r.data.tags.get("protocol.part") == "tuning":
            continue
        m, batch = r.data.metrics, r.data.params.get("train.batch_size")
        if m.get("train_seconds") and m.get("epochs_completed") and batch:
            rates.append(m["train_seconds"] / m["epochs_completed"] / _epoch_scale(r.data.params, float(batch), base,
                                                                                  preset))
    return statistics.median(rates) if rates else None


def _epoch_scale(params: dict, batch: float, base: int, preset: str) -> float:
    """A logged run's epoch against the preset's (the declared figures' unit): its batch over the
    preset's when an epoch is a number of steps; its samples over the preset's steps x batch when
    it trained to ``train.samples_per_epoch``."""
    from benchmark.run.config import PRESETS
    samples = params.get("train.samples_per_epoch")
    steps = PRESETS[preset].get("train", {}).get("steps_per_epoch")
    if samples in (None, "None") or not steps:
        return batch / base
    return float(samples) / (steps * base)


@dataclass
class TimeLimit:
    """``--hours``: start nothing that would not end within ``hours`` of ``start``. A trial or
    cell costs its epochs times the architecture's seconds per epoch, scaled by its batch (a trial
    at the largest batch the study can draw, counted unpruned; see ``trial``): as measured on this machine
    (``measured_seconds_per_epoch``) once it has finished a run of that architecture, else as
    the protocol declares; work with neither is started. Once one thing is refused, so is
    everything after it: the protocol stops in its own order, not by filling the time left with
    whatever is cheaper. (The declared figures alone decide what the protocol declares, such as
    which architectures the loss study can afford; this only decides when to stop.)

    ``pause_runs`` (``--pause-runs``): a final, default or loss run needs only its next epoch to
    fit; it is paused after the last epoch that ends in time (``pause``) and the next protocol run
    resumes it from there. For a machine whose ``runs/`` folder stays: the checkpoints are the
    run's progress. Trials are never resumed, so they still need all of their time."""
    lp: LoadedProtocol
    hours: float
    pause_runs: bool = False
    start: float = field(default_factory=time.monotonic)
    stopped: str = ""
    experiment: Optional[str] = None
    _rates: dict = field(default_factory=dict)

    def seconds_per_epoch(self, arch: str) -> Optional[float]:
        if arch not in self._rates:     # measured once per architecture, as soon as there is a run
            measured = measured_seconds_per_epoch(self.lp, arch, self.experiment)
            if measured is None:
                return self.lp.spec.seconds_per_epoch.get(arch)
            self._rates[arch] = measured
        return self._rates[arch]

    def _cost(self, arch: str, epochs: float, batch_factor: float) -> Optional[float]:
        sec = self.seconds_per_epoch(arch)
        return None if sec is None else sec * epochs * batch_factor

    def seconds_left(self) -> float:
        return self.hours * 3600 - (time.monotonic() - self.start)

    def _refuse(self, what: str, seconds: Optional[float]) -> Optional[str]:
        if not self.stopped and (seconds is None or seconds <= self.seconds_left()):
            return None
        if not self.stopped:
            self.stopped = (f"{what} would take about {seconds / 60:.0f} min and {max(0.0, self.seconds_left()) / 60:.0f} "
                            f"min of --hours {self.hours:g} are left")
        return self.stopped

    def trial(self, arch: str) -> Optional[str]:
        """The next trial, costed at the largest batch the study can draw: its batch is drawn only
        once it has started. A swinunetr trial at batch 16 took 358-446 s per epoch against
        163-184 s at 8, up to 2.3x the mean batch's estimate and 1.35x the largest's: a nearer
        bound than the mean, not a strict one."""
        return self._refuse(f"a {arch} trial", self._cost(arch, trial_epochs(self.lp), trial_batch_factor(self.lp, "max")))

    def cell(self, c, resume: Optional[str] = None) -> Optional[str]:
        """A final, default or loss run: its epochs left (``epochs_left``: all, or those after
        the last checkpoint of the interrupted run ``resume``) at its own batch
        (``cell_batch_factor``), or with ``pause_runs`` one epoch; a reference run trains nothing."""
        if c.reference:
            return self._refuse(f"run {c.label}", 0.0)
        epochs = 1 if self.pause_runs else epochs_left(self.lp, resume)
        what = f"an epoch of run {c.label}" if self.pause_runs else f"{'resuming ' if resume else ''}run {c.label}"
        return self._refuse(what, self._cost(c.arch, epochs, cell_batch_factor(self.lp, c)))

    def pause(self, c) -> Callable[[float], Optional[str]]:
        """The ``PauseCheck`` of cell ``c``'s run: once the time left is shorter than the epoch
        just trained, it stops the protocol and pauses the run. (The last epoch is never
        followed by a pause: the test evaluation after it may run a few minutes over.)"""
        def check(epoch_seconds: float) -> Optional[str]:
            left = self.seconds_left()
            if not self.stopped and epoch_seconds <= left:
                return None
            self.stopped = self.stopped or (
                f"run {c.label} paused: its next epoch would take about {epoch_seconds / 60:.0f} min and "
                f"{max(0.0, left) / 60:.0f} min of --hours {self.hours:g} are left")
            return self.stopped
        return check

