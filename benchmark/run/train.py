"""Training: one architecture on the fixed split, tracked in one MLflow run.

Stages of ``run_experiment``, the run pipeline (each leaves files the next reads, so a run can resume):
  1. resolve: the config, its architecture already resolved to the registry's canonical name by
     ``benchmark.run.config`` (once, when the config was built), or a resumed run's checkpoint
     and config (``benchmark.run.resume``);
  2. build the model, once, from that config (a bad architecture kwarg or a checkpoint that does
     not fit fails here, before data or an MLflow run exist); then load the crop cache
     (``benchmark.data``) and create or resume the MLflow run;
  3. train epoch by epoch; after each epoch log metrics (step = epoch) and atomically write
     ``last.pt`` (and ``best.pt`` on a new best validation Dice) under runs/checkpoints/<run_id>/;
     early-stop on validation Dice;
  4. evaluate ``best.pt``'s weights on the test split (``benchmark.run.evaluate``: metrics and
     predictions only) unless this is a tuning trial (the test split is never touched by tuning);
  5. publish the evaluated model (``benchmark.run.publish``: checkpoint artifact, MLflow model).

Determinism: the batch order of epoch ``e`` comes from ``(seed, e)`` and each sample's
augmentation from ``(seed, e, row)`` (``benchmark.data.loader``, whatever the number of loader
workers), and the global RNGs are re-seeded at each epoch start, so a run resumed from epoch
``e`` continues exactly as an uninterrupted one would (on the CPU).

Distributed: under ``torchrun`` each rank takes an interleaved shard of every global batch
(the same global batch as a single process), DDP averages gradients, validation sums are
all-reduced, and only rank 0 talks to MLflow or writes files.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from architectures import main_output

from benchmark.core.checkpoint import load_checkpoint, published_state, remove_checkpoint, save_checkpoint
from benchmark.core.progress import progress_bar
from benchmark.run.config import RunConfig
from benchmark.data.loader import TrainBatches, center_batches, to_model_input
from benchmark.core.errors import TrainingError, UsageError
from benchmark.core.paths import checkpoints_dir
from benchmark.core.tracking import Tracker
from benchmark.run.run_tracking import backfill, close_training, log_epoch, open_tracker

EpochCallback = Callable[[int, dict], None]
# asked after each epoch that has another one after it, with that epoch's seconds: a reason (not
# None) pauses the run there (``bench protocol run --hours --pause-runs``)
PauseCheck = Callable[[float], Optional[str]]


class RunPaused(Exception):
    """A run stopped on purpose after a checkpointed epoch (``PauseCheck``): it ends KILLED with
    its checkpoint kept, exactly as after Ctrl-C, so whatever resumes interrupted runs (``bench
    run --resume``, ``bench suite``, ``bench protocol run``) continues it from that epoch."""

    def __init__(self, reason: str, run_id: Optional[str] = None):
        super().__init__(reason)
        self.reason, self.run_id = reason, run_id


# ---------------------------------------------------------------------------------------------
# setup helpers
# ---------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: RunConfig, dist: DistInfo) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device=cuda but no CUDA device is available")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # cuDNN's autotuner picks the fastest convolution per shape (patch shapes are fixed), but
    # its choice can differ between runs, so only where exact determinism is not asked for
    torch.backends.cudnn.benchmark = not deterministic


def build_model(cfg: RunConfig):
    """The config's architecture, its name already resolved by ``benchmark.run.config``."""
    from architectures import create_architecture
    return create_architecture(cfg.model.arch, in_channels=1, out_channels=1,
                               spatial_size=cfg.data.patch_zyx, **cfg.model.kwargs)


def build_seeded_model(cfg: RunConfig):
    """``build_model`` after seeding every RNG with the run's seed: the model a run trains (its
    initial weights depend on the seed only)."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    return build_model(cfg)


def build_loss(cfg: RunConfig, model):
    from benchmark.losses import create_loss
    from benchmark.losses.deep_supervision import DeepSupervisionLoss
    weights = getattr(model, "deep_supervision_weights", None)
    return DeepSupervisionLoss(create_loss(cfg.loss.name, **cfg.loss.kwargs), weights)


def build_optimizer(cfg: RunConfig, params, fused: bool = False):
    """``fused`` (CUDA): one kernel per step, and ``GradScaler`` passes it the inf check as a
    device tensor instead of reading it back to the host every step (a per-step sync)."""
    o = cfg.optim
    kw = {"fused": True} if fused else {}
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **kw)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **kw)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0,
                           weight_decay=o.weight_decay, **kw)


def build_scheduler(cfg: RunConfig, optimizer):
    """Per-epoch schedule with optional linear warm-up."""
    o, total = cfg.optim, cfg.train.epochs

    def factor(epoch: int) -> float:
        if o.warmup_epochs and epoch < o.warmup_epochs:
            return (epoch + 1) / (o.warmup_epochs + 1)
        t = (epoch - o.warmup_epochs) / max(1, total - o.warmup_epochs)
        if o.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if o.scheduler == "poly":
            return max(0.0, 1 - t) ** 0.9
        if o.scheduler == "step":
            return 0.1 ** int(t * 3)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# batches come from benchmark.data.loader (DataLoader workers, or cut on the device)
# ---------------------------------------------------------------------------------------------
#: the training loop reads its per-step losses back to the host (to check them and refresh the
#: progress bar) once every this many steps and at the end of the epoch, never every step: each
#: read waits for the device to finish everything queued, which would stop the host from
#: preparing the next steps while the device computes
LOSS_CHECK_EVERY = 25


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    run_id: Optional[str]
    best_val_dice: float
    best_epoch: int
    epochs_completed: int
    stopped_early: bool
    test_summary: dict = field(default_factory=dict)


class Trainer:
    """The training and validation steps of one model. ``model``: the run's model, built once by
    the run pipeline (``build_seeded_model``); left out, the trainer builds it the same way."""

    def __init__(self, cfg: RunConfig, store, device: torch.device, dist: DistInfo, model=None):
        self.cfg, self.store, self.device, self.dist = cfg, store, device, dist
        self.model = (model if model is not None else build_seeded_model(cfg)).to(device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.loss_fn = build_loss(cfg, self.model)
        self.optimizer = build_optimizer(cfg, self.model.parameters(), fused=device.type == "cuda")
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.use_amp = cfg.train.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.net = self.model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.net = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        self.train_rows = store.indices("train")
        self.val_rows = store.indices("val")
        if len(self.train_rows) == 0 or len(self.val_rows) == 0:
            raise UsageError("the training or validation split is empty for this data config")
        self.batches = TrainBatches(store, self.train_rows, cfg.data, cfg.train.batch_size, cfg.train.seed,
                                    cfg.train.max_steps(), device, dist.rank, dist.world,
                                    local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    def _to(self, x):
        x = x.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def train_epoch(self, epoch: int, show_progress: bool) -> dict:
        """One epoch; nothing in a step waits for the device (see ``LOSS_CHECK_EVERY``)."""
        cfg = self.cfg
        self.net.train()
        torch.manual_seed(cfg.train.seed * 7919 + epoch)  # dropout etc.: resumable
        n = len(self.batches)
        losses = torch.zeros(n, dtype=torch.float32, device=self.device)   # per step, on the device
        sizes: list[int] = []
        checked = 0
        bar = progress_bar(self.batches.epoch(epoch), total=n, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                           leave=False, disable=not show_progress, unit="batch", every_percent=25)
        for step, (images, masks) in enumerate(bar):
            images, masks = to_model_input(images, masks, self.device, cfg.data.hu_window, cfg.train.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = self.net(images)
            loss = self.loss_fn(_float(out), masks)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses[step] = loss.detach()
            sizes.append(images.shape[0])
            if (step + 1) % LOSS_CHECK_EVERY == 0:
                checked = self._check_losses(losses, checked, step + 1, epoch, bar if show_progress else None)
        self._check_losses(losses, checked, len(sizes), epoch, None)
        self.scheduler.step()
        weights = torch.tensor(sizes, dtype=torch.float64, device=self.device)
        stats = torch.stack([(losses[:len(sizes)].double() * weights).sum(), weights.sum()])
        _all_reduce(stats, self.dist)   # on the device: NCCL reduces device tensors only
        stats = stats.cpu()
        return {"train_loss": float(stats[0] / max(stats[1], 1))}

    def _check_losses(self, losses: torch.Tensor, start: int, stop: int, epoch: int, bar) -> int:
        """Read steps ``start:stop``'s losses back (one host sync) and stop on a non-finite one.
        A non-finite loss is caught at most ``LOSS_CHECK_EVERY`` steps late and always before the
        epoch's checkpoint is written, so the last checkpoint on disk is still a good one."""
        values = losses[start:stop].cpu()
        bad = (~torch.isfinite(values)).nonzero().flatten()
        if len(bad):
            k = int(bad[0])
            raise TrainingError(f"non-finite loss ({float(values[k])}) at epoch {epoch + 1}, step {start + k + 1}; "
                                f"stopped, the last good checkpoint is kept")
        if bar is not None and len(values):
            bar.set_postfix(loss=f"{float(values[-1]):.4f}")
        return stop

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation Dice per nodule on the centre window (selection metric), loss, and soft Dice.

        Soft Dice is the Dice of the predicted probabilities (2 sum(p g) / (sum p + sum g) per
        nodule): it rises as soon as the model moves towards the nodules, while the thresholded
        Dice stays 0 until a probability crosses the threshold, which in a short tuning trial can
        be never; a protocol can tune on it (``tuning.metric``)."""
        from monai.metrics import compute_dice
        self.net.eval()
        rows = self.val_rows[self.dist.rank::self.dist.world]
        # accumulated on the device and read back once (no host sync per batch)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # dice, loss, count, soft dice
        for _, images, masks in center_batches(self.store, rows, self.cfg.train.batch_size, self.cfg.data.patch_zyx):
            images, masks = self._to(images), self._to(masks)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                logits = main_output(self.net(images))
            logits = logits.float()
            pred = (torch.sigmoid(logits) > self.cfg.eval.threshold).float()
            # nodules that vanish from a coarse preset's ground truth are not scored (as on test)
            scorable = masks.flatten(1).any(1)
            dice = compute_dice(pred, masks, include_background=True, ignore_empty=False).flatten()
            sums[0] += (torch.nan_to_num(dice, nan=0.0) * scorable).sum()
            sums[1] += self.loss_fn(logits, masks).double() * images.shape[0]
            sums[2] += scorable.sum()
            prob = torch.sigmoid(logits).flatten(1)
            gt = masks.flatten(1).float()
            soft = 2 * (prob * gt).sum(1) / (prob.sum(1) + gt.sum(1)).clamp_min(1e-6)
            sums[3] += (soft * scorable).sum()
        _all_reduce(sums, self.dist)
        sums = sums.cpu()
        n = max(float(sums[2]), 1.0)
        n_all = max(len(self.val_rows), 1)
        return {"val_dice": float(sums[0]) / n, "val_loss": float(sums[1]) / n_all,
                "val_soft_dice": float(sums[3]) / n}

    def state(self, epoch: int, best: dict, history: list, elapsed: float, run_id: Optional[str]) -> dict:
        return {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "best": dict(best), "history": list(history), "train_seconds": elapsed,
            "config": self.cfg.model_dump(mode="json"), "run_id": run_id,
        }

    def load_training_state(self, state: dict):
        """A checkpoint's optimiser, schedule and scaler (its weights are the model's already)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def _float(out):
    if isinstance(out, (list, tuple)):
        return [o.float() for o in out]
    return out.float()


def _all_reduce(t: torch.Tensor, dist: DistInfo):
    if dist.world > 1:
        import torch.distributed as tdist
        tdist.all_reduce(t)


def run_experiment(cfg: RunConfig, *, resume_run_id: Optional[str] = None, tags: Optional[dict] = None,
                   parent_run_id: Optional[str] = None, on_epoch_end: Optional[EpochCallback] = None,
                   evaluate_test: bool = True, experiment: Optional[str] = None,
                   show_progress: bool = True, on_run_start: Optional[Callable[[str], None]] = None,
                   discard_checkpoints: bool = False, pause: Optional[PauseCheck] = None) -> RunResult:
    """Train (or resume) one run, then evaluate and publish it: the stages of the module
    docstring, numbered below.

    ``discard_checkpoints``: delete the run's checkpoints when it ends, however it ends (tuning
    trials: a trial is never resumed and its model never reused).

    ``pause``: asked after every epoch but the last; a reason raises ``RunPaused`` there, once the
    epoch is checkpointed and logged (one process only: ranks would not agree on a clock).
    """
    from benchmark.data import load_crops
    from benchmark.run.resume import resume_state as read_resume_state

    resume_state, cfg = read_resume_state(resume_run_id, cfg)                 # 1. resolve
    model = _build_run_model(cfg, resume_run_id, resume_state)                 # 2. build, once
    dist, device = _prepare(cfg)
    if pause is not None and dist.world > 1:
        raise UsageError("a run can be paused at an epoch only in one process, not under torchrun")
    store = load_crops(cfg.data, progress=show_progress and dist.main)
    tracker = open_tracker(cfg, store, dist, resume_run_id, resume_state, tags, experiment, parent_run_id)
    run_id = tracker.run_id if tracker else None
    if on_run_start is not None and run_id:
        on_run_start(run_id)

    status = "FAILED"
    ckpt_dir = None
    try:
        trainer = Trainer(cfg, store, device, dist, model=model)                # 3. train
        progress = _restore(trainer, tracker, dist, resume_run_id, resume_state)
        ckpt_dir = checkpoints_dir(run_id) if run_id else None
        stopped_early = _train_epochs(trainer, cfg, progress, tracker, ckpt_dir, run_id, dist,
                                      show_progress, on_epoch_end, pause)
        best = progress.best
        result = RunResult(run_id, best["val_dice"], best["epoch"], len(progress.history), stopped_early)
        if dist.main:
            close_training(tracker, progress, stopped_early, ckpt_dir,
                           samples_per_epoch=len(trainer.batches) * cfg.train.batch_size)
            if evaluate_test:
                from benchmark.run import evaluate, publish
                _load_best_weights(trainer.model, ckpt_dir)
                result.test_summary = evaluate.evaluate_run(trainer.model, store, cfg, device, tracker,  # 4.
                                                            ckpt_dir, progress.elapsed)
                publish.publish_run(trainer.model, store, cfg, tracker, ckpt_dir)                 # 5.
        status = "FINISHED"
        return result
    except TrainingError as e:
        if dist.main and ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
            raise TrainingError(f"{e} ({ckpt_dir / 'last.pt'})") from None
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        if dist.main:
            print(f"\ninterrupted; resume with: bench run --resume {run_id}", file=sys.stderr)
        raise
    except RunPaused as e:
        status = "KILLED"
        e.run_id = run_id
        raise
    except BaseException as e:
        if type(e).__name__ == "TrialPruned":
            status = "KILLED"
        raise
    finally:
        if discard_checkpoints and ckpt_dir is not None:
            for name in ("last.pt", "best.pt"):
                remove_checkpoint(ckpt_dir / name)
        if tracker is not None:
            tracker.finish(status)
        if dist.world > 1:
            import torch.distributed as tdist
            if tdist.is_initialized():
                tdist.destroy_process_group()


@dataclass
class TrainingProgress:
    """Where training stands: what a checkpoint restores and every epoch advances."""
    start_epoch: int = 0
    history: list = field(default_factory=list)
    elapsed: float = 0.0           # training seconds so far (resumed runs included)
    best: dict = field(default_factory=lambda: {"val_dice": -1.0, "epoch": -1, "bad_epochs": 0})


def _build_run_model(cfg: RunConfig, resume_run_id: Optional[str], resume_state: Optional[dict]):
    """The run's one model, seeded; a resumed run's checkpoint weights loaded into it. A bad
    architecture kwarg or a checkpoint that does not fit fails here, before data or a run exist."""
    model = build_seeded_model(cfg)
    if resume_state is not None:
        from benchmark.run.resume import load_model_weights
        load_model_weights(model, resume_state, checkpoints_dir(resume_run_id) / "last.pt", cfg)
    return model


def _prepare(cfg: RunConfig) -> tuple["DistInfo", torch.device]:
    """Device and process group, and the checks that must fail before data or a run exist."""
    device_kind = "cuda" if (cfg.train.device != "cpu" and torch.cuda.is_available()) else "cpu"
    dist = init_distributed(device_kind)
    device = pick_device(cfg, dist)
    if dist.main:
        from benchmark.core.tracking import check_reachable, load_settings
        check_reachable(load_settings().tracking_uri)  # bad mlflow.yaml / dead server: before the data build
    return dist, device


def _restore(trainer: "Trainer", tracker: Optional[Tracker], dist: "DistInfo", resume_run_id: Optional[str],
             resume_state: Optional[dict]) -> TrainingProgress:
    """A fresh start, or the resumed run's optimiser and progress (its weights are in the model
    already; its metrics that MLflow lacks back-filled, so no step is logged twice)."""
    if resume_state is None:
        return TrainingProgress()
    _load_training_state(trainer, resume_state, checkpoints_dir(resume_run_id) / "last.pt")
    progress = TrainingProgress(resume_state["epoch"], resume_state["history"], resume_state["train_seconds"],
                                resume_state["best"])
    if dist.main:
        backfill(tracker, progress.history, progress.best)
    return progress


def _train_epochs(trainer: "Trainer", cfg: RunConfig, progress: TrainingProgress, tracker: Optional[Tracker],
                  ckpt_dir: Optional[Path], run_id: Optional[str], dist: "DistInfo", show_progress: bool,
                  on_epoch_end: Optional[EpochCallback], pause: Optional[PauseCheck] = None) -> bool:
    """Epochs from ``progress.start_epoch`` on, each checkpointed then logged; True when early
    stopping ended them. ``pause``: see ``run_experiment``."""
    best, history = progress.best, progress.history
    # the schedule spans train.epochs; a truncated run (stop_after_epochs) trains its beginning
    last = min(cfg.train.epochs, cfg.train.stop_after_epochs or cfg.train.epochs)
    epochs = range(progress.start_epoch, last)
    bar = progress_bar(epochs, desc=f"{cfg.model.arch} [{cfg.preset}]", unit="epoch", initial=progress.start_epoch,
                       total=last, disable=not (show_progress and dist.main))
    for epoch in bar:
        t0 = time.perf_counter()
        metrics = trainer.train_epoch(epoch, show_progress and dist.main)
        if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == last:
            metrics.update(trainer.validate())
        metrics["lr"] = trainer.optimizer.param_groups[0]["lr"]
        metrics["epoch_seconds"] = time.perf_counter() - t0
        progress.elapsed += metrics["epoch_seconds"]
        history.append({"epoch": epoch + 1, **metrics})
        improved = metrics.get("val_dice", -1.0) > best["val_dice"]
        if improved:
            best.update(val_dice=metrics["val_dice"], epoch=epoch + 1, bad_epochs=0)
        elif "val_dice" in metrics:
            best["bad_epochs"] += 1
        if dist.main:
            # checkpoint first, then metrics: a kill in between loses no step, and the resume
            # back-fills metrics of epochs the checkpoint has but MLflow lacks (no duplicates)
            state = trainer.state(epoch + 1, best, history, progress.elapsed, run_id)
            if improved:
                save_checkpoint(published_state(state), ckpt_dir / "best.pt")    # weights only
            save_checkpoint(state, ckpt_dir / "last.pt")
            log_epoch(tracker, history[-1], best)
        bar.set_postfix(val_dice=f"{metrics.get('val_dice', float('nan')):.3f}", best=f"{best['val_dice']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if best["bad_epochs"] >= cfg.train.early_stopping_patience:
            return True
        # after the early-stopping check: a run paused here always has an epoch left to train
        if pause is not None and epoch + 1 < last:
            why = pause(metrics["epoch_seconds"])
            if why:
                raise RunPaused(why)
    return False


def _load_training_state(trainer: "Trainer", state: dict, path: Path):
    """Restore a checkpoint's optimiser state into the trainer of its run; a mismatch is one line."""
    from benchmark.run.resume import mismatch_message
    try:
        trainer.load_training_state(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UsageError(mismatch_message(path, trainer.cfg, e)) from None


def _load_best_weights(model, ckpt_dir: Path) -> None:
    """The best validation epoch's weights: the model that is evaluated and published."""
    if (ckpt_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(ckpt_dir / "best.pt")["model"])
