"""BiX-NAS phase one: train the super-network (``architectures._bixnas_supernet.BiXSuperNet``) and
prune it progressively to its phase-one genotype.

The selection logits train jointly with the weights on the training split (BiX-NAS's single-level
scheme), with a sparsity pressure: ``sparsity x`` the expected number of distinct inputs per
block (``BiXSuperNet.sparsity``) is added to the training loss, so inputs that do not pay for
themselves lose probability. From half-way through, every pruning step removes the least probable
input of each block that has more than ``keep``. Only the train and val splits are read (the
engine's Trainer loads those two).

Used by both phase twos: the Optuna/NSGA-II study (``nas.py``, which stores the result on the
study) and the progressive evolutionary search (``bixnas_evolve.py``, which stores it in its
record). Budget: process CPU seconds (wall seconds on a GPU), see :class:`Meter`.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

#: weight of the sparsity term in phase one's loss (0 turns it off)
SPARSITY = 0.01


class Meter:
    """CPU seconds of this process (all its threads), or wall seconds on a GPU, over a block."""

    def __init__(self, device_kind: str):
        self.device_kind = device_kind

    def __enter__(self):
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = (time.perf_counter() - self.w0) if self.device_kind == "cuda" else \
            (time.process_time() - self.c0)


def device_kind() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def prune_epochs(epochs: int, rounds: int) -> list[int]:
    """Epochs (0-based) after which the super-network is pruned: spread over the second half,
    the last one before the final epoch so the pruned network trains at least one epoch."""
    if rounds < 1:
        return []
    first, last = epochs // 2, max(epochs // 2, epochs - 2)
    if rounds == 1:
        return [last]
    return sorted({round(first + i * (last - first) / (rounds - 1)) for i in range(rounds)})


class _SparseLoss:
    """The engine's loss plus ``weight x net.sparsity()`` (zero in evaluation, so validation
    losses stay the plain loss)."""

    def __init__(self, loss_fn, net, weight: float):
        self.loss_fn, self.net, self.weight = loss_fn, net, weight

    def __call__(self, out, target):
        loss = self.loss_fn(out, target)
        return loss + self.weight * self.net.sparsity().to(loss.device) if self.weight else loss


def train_supernet(preset: str, loss: str, epochs: int, overrides: list[str], run_name: str, tags: dict,
                   parent: Optional[str] = None, sparsity: float = SPARSITY, show_progress: bool = True):
    """Train and progressively prune the super-network; returns (genotype, info) where info has
    the budget (seconds, epochs, device kind) and the MLflow run id."""
    import torch
    from architectures._layers import PadToMultiple
    from architectures._bixnas_supernet import BiXSuperNet
    from benchmark.core.tracking import Tracker
    from benchmark.data import load_crops
    from benchmark.run.config import build_config
    from benchmark.run.train import DistInfo, Trainer, build_optimizer, build_scheduler, pick_device

    cfg = build_config(preset, [f"train.epochs={epochs}", *overrides], **{"model.arch": "bixnas", "loss.name": loss})
    dist = DistInfo()
    device = pick_device(cfg, dist)
    store = load_crops(cfg.data)
    tracker = Tracker.start(run_name, {**tags, "nas.phase": "1"}, parent_run_id=parent)
    tracker.log_params({**cfg.flat(), "search.sparsity": sparsity})
    with Meter(device.type) as meter:
        trainer = Trainer(cfg, store, device, dist)  # train/val rows only; its model is replaced below
        size_kw = {k: v for k, v in cfg.model.kwargs.items() if k in ("width", "full_res_width", "norm")}
        net = BiXSuperNet(spatial_size=cfg.data.patch_zyx, **size_kw)
        model = PadToMultiple(net, net.min_divisor).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        trainer.model = trainer.net = model
        trainer.loss_fn = _SparseLoss(trainer.loss_fn, net, sparsity)
        # logits with BiX-NAS's Adam at 1e-3, weights with the preset's optimiser: one step, one loss
        trainer.optimizer = build_optimizer(cfg, [{"params": net.weight_parameters()},
                                                  {"params": net.arch_parameters(), "lr": 1e-3, "weight_decay": 0.0}])
        trainer.scheduler = build_scheduler(cfg, trainer.optimizer)
        # each round removes one input per block: from the full 5 (4 in the last decoder) to ``keep``
        schedule = prune_epochs(epochs, (net.genotype.levels + 1) - net.keep)
        for epoch in range(epochs):
            metrics = trainer.train_epoch(epoch, show_progress)
            if epoch in schedule:
                metrics["pruned_inputs"] = net.prune_step()
            with torch.no_grad():
                net.train()
                metrics["expected_inputs"] = float(net.sparsity())
            metrics.update(trainer.validate())
            tracker.log_metrics(metrics, step=epoch + 1)
            if show_progress:
                print(f"phase one epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                      file=sys.stderr)
        while not net.pruned():  # fewer epochs than rounds: finish the pruning by the logits
            net.prune_step()
        g = net.genotype_now()
    tracker.log_text(g.describe() + "\n", "nas/phase1_genotype.txt")
    tracker.log_text(json.dumps({"/".join(map(str, k)): v for k, v in net.probabilities().items()}, indent=1),
                     "nas/phase1_probabilities.json")
    tracker.log_metrics({"budget_s": meter.seconds})
    tracker.finish()
    return g, {"budget_s": meter.seconds, "epochs": epochs, "device_kind": device.type,
               "mlflow_run_id": tracker.run_id}


def run_phase_one(study, meta: dict, overrides: list[str], parent: str, show_progress: bool = True):
    """Phase one of a NAS study, once: its genotype and budget are stored on the study."""
    from architectures.bixnas import Genotype
    if "phase1_genotype" in study.user_attrs:
        return Genotype.from_dict(study.user_attrs["phase1_genotype"])
    g, info = train_supernet(meta["preset"], meta["loss"], int(meta["phase1_epochs"]), overrides,
                             f"{study.study_name}-phase1", {"optuna.study": study.study_name}, parent,
                             show_progress=show_progress)
    study.set_user_attr("phase1_genotype", g.to_dict())
    study.set_user_attr("phase1", info)
    return g
