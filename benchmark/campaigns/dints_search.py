"""``bench search dints``: DiNTS's topology search on this data, with MONAI's own search space.

    bench search dints --preset cpu [--warmup-epochs 10] [--epochs 20] [--out PATH]

The search space is MONAI's ``TopologySearch`` (every path between neighbouring resolutions
and all five cell ops live, architecture parameters ``log_alpha_a`` for paths and
``log_alpha_c`` for ops) wrapped in ``DiNTS``, as MONAI's DiNTS search tutorial does. Its loop,
rewritten here for one process and no AMP (the tutorial hard-codes CUDA):

* the training split is shuffled (seeded) and halved: half "w" trains the weights, half "a"
  the architecture; the validation split is only scored (never the test split);
* warm-up epochs train the weights alone; then every weight step (architecture parameters
  frozen; SGD lr 0.025, momentum 0.9, weight decay 4e-5, lr halved at 40 % and 80 % of the
  search epochs) is followed by one architecture step on the next "a" batch (weights frozen;
  two Adams, lr 1e-3, betas (0.5, 0.999)) on the segmentation loss plus the entropy of the
  child-path probabilities and of the op softmax (both ramped up linearly over the search
  epochs), the memory term |ram_factor - usage / full usage| and 0.001 x the topology entropy;
* the result is ``TopologySearch.decode()`` (a shortest path over feasible topologies), written
  as ``architectures/dints_genotype.json`` with its MLflow run and its budget.

Resumable: after every epoch the search state (weights and architecture parameters, the three
optimisers, the RNG, the seconds spent, the MLflow run) goes to an atomic checkpoint under
``runs/nas/``, keyed by the search's settings. Rerunning the same command after a stop continues
from the last finished epoch in the same MLflow run (batch order and augmentation are drawn
from (seed, epoch), so a resumed search trains what an uninterrupted one would); the checkpoint
is deleted once the topology is written.

The search space is sized like the registered network (6 blocks, 3 depths) at channel_mul 0.25;
the decoded codes do not depend on the width, and ``dints`` rebuilds them at its own.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmark.core.errors import UsageError

W_LR, A_LR = 0.025, 1e-3


def _split_train(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the training rows and halve them: (weight half, architecture half)."""
    rng = np.random.default_rng(seed)
    rows = rows[rng.permutation(len(rows))]
    half = max(1, len(rows) // 2)
    return np.sort(rows[:half]), np.sort(rows[half:] if len(rows) > 1 else rows)


def _arch_loss_terms(space, images_shape, ram_factor: float):
    """Regularisers of the architecture step: (path entropy, op entropy, memory, topology entropy)."""
    import torch
    import torch.nn.functional as F
    probs_a, _ = space.get_prob_a(child=True)
    entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
    entropy_c = -(F.softmax(space.log_alpha_c, dim=-1) * F.log_softmax(space.log_alpha_c, dim=-1)).mean()
    full = space.get_ram_cost_usage(images_shape, full=True)
    usage = space.get_ram_cost_usage(images_shape)
    ram = torch.abs(ram_factor - usage / full)
    return entropy_a, entropy_c, ram, space.get_topology_entropy(probs_a)


def search_state_path(preset: str, warmup_epochs: int, search_epochs: int, overrides: list[str],
                      channel_mul: float, num_blocks: int, num_depths: int, ram_factor: float) -> Path:
    """The resumable state of a search with these settings (another setting, another search)."""
    from benchmark.core.paths import runs_dir
    key = json.dumps([preset, warmup_epochs, search_epochs, list(overrides), channel_mul, num_blocks,
                      num_depths, ram_factor])
    return runs_dir() / "nas" / f"dints-search-{preset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def run_dints_search(preset: str, warmup_epochs: int, search_epochs: int, overrides: list[str],
                     out: Optional[Path] = None, channel_mul: float = 0.25, num_blocks: int = 6,
                     num_depths: int = 3, ram_factor: float = 0.8, show_progress: bool = True) -> dict:
    """Search, decode, log to MLflow, write the genotype; returns the genotype dict."""
    import torch
    from monai.networks.nets import DiNTS, TopologySearch

    from architectures._layers import PadToMultiple
    from architectures.dints import GENOTYPE_PATH, save_topology
    from benchmark.core.checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
    from benchmark.run.config import build_config
    from benchmark.data import load_crops
    from benchmark.core.tracking import Tracker
    from benchmark.data.loader import TrainBatches, to_model_input
    from benchmark.run.train import DistInfo, Trainer, pick_device, seed_everything

    if warmup_epochs < 0 or search_epochs < 1:
        raise UsageError("--warmup-epochs must be >= 0 and --epochs >= 1")
    epochs = warmup_epochs + search_epochs
    cfg = build_config(preset, [f"train.epochs={epochs}", *overrides], **{"model.arch": "dints"})
    dist = DistInfo()
    device = pick_device(cfg, dist)
    store = load_crops(cfg.data)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    state_path = search_state_path(preset, warmup_epochs, search_epochs, overrides, channel_mul, num_blocks,
                                   num_depths, ram_factor)
    state = load_checkpoint(state_path) if state_path.exists() else None
    if state:
        tracker = Tracker.resume(state["run_id"])
        print(f"dints search: resuming MLflow run {state['run_id']} after epoch {state['epoch']}/{epochs} "
              f"({state_path})", file=sys.stderr)
    else:
        tracker = Tracker.start(f"dints-search-{preset}", {"nas.searcher": "dints", "kind": "nas", "preset": preset,
                                                           "arch": "dints"})
        tracker.log_params({**cfg.flat(), "search.warmup_epochs": warmup_epochs, "search.epochs": search_epochs,
                            "search.channel_mul": channel_mul, "search.num_blocks": num_blocks,
                            "search.num_depths": num_depths, "search.ram_factor": ram_factor})
    c0, w0 = time.process_time(), time.perf_counter()
    spent = state["seconds"] if state else 0.0      # seconds of the search's earlier processes

    def seconds_so_far() -> float:
        return spent + ((time.perf_counter() - w0) if device.type == "cuda" else (time.process_time() - c0))
    status = "FAILED"
    try:
        trainer = Trainer(cfg, store, device, dist)  # train/val rows, loss, validation; model replaced below
        space = TopologySearch(channel_mul=channel_mul, num_blocks=num_blocks, num_depths=num_depths,
                               use_downsample=True, spatial_dims=3, device=str(device))
        net = DiNTS(dints_space=space, in_channels=1, num_classes=1, use_downsample=True).to(device)
        model = PadToMultiple(net, 2 ** (num_depths + 1))
        trainer.model = trainer.net = model
        # DiNTS.weight_parameters() also returns the alphas: filter them out by identity
        arch = [space.log_alpha_a, space.log_alpha_c]
        weights = [p for p in model.parameters() if all(p is not a for a in arch)]
        opt_w = torch.optim.SGD(weights, lr=W_LR, momentum=0.9, weight_decay=4e-5)
        opt_a = torch.optim.Adam([space.log_alpha_a], lr=A_LR, betas=(0.5, 0.999), weight_decay=0.0)
        opt_c = torch.optim.Adam([space.log_alpha_c], lr=A_LR, betas=(0.5, 0.999), weight_decay=0.0)
        w_rows, a_rows = _split_train(trainer.train_rows, cfg.train.seed)
        loss_fn = trainer.loss_fn
        bs, steps = cfg.train.batch_size, cfg.train.steps_per_epoch
        # the weight half and the architecture half, each with its own seeded epoch order
        w_source = TrainBatches(store, w_rows, cfg.data, bs, cfg.train.seed, steps, device)
        a_source = TrainBatches(store, a_rows, cfg.data, bs, cfg.train.seed + 1, None, device)

        first_epoch, metrics = 0, {}
        if state:
            model.load_state_dict(state["model"])
            for opt, name in ((opt_w, "opt_w"), (opt_a, "opt_a"), (opt_c, "opt_c")):
                opt.load_state_dict(state[name])
            torch.set_rng_state(state["torch_rng"])
            first_epoch, metrics = state["epoch"], state["metrics"]

        def model_input(raw):
            return to_model_input(*raw, device, cfg.data.hu_window)
        for epoch in range(first_epoch, epochs):
            searching = epoch >= warmup_epochs
            s = epoch - warmup_epochs
            for g in opt_w.param_groups:  # halved at 40 % and 80 % of the search epochs
                g["lr"] = W_LR * (0.5 ** ((s >= 0.4 * search_epochs) + (s >= 0.8 * search_epochs)) if searching else 1.0)
            ramp = (s + 1) / search_epochs if searching else 0.0
            a_batches = a_source.epoch(epoch)
            sums = {"train_loss": 0.0, "arch_loss": 0.0}
            n = 0
            for raw in w_source.epoch(epoch):
                images, masks = model_input(raw)
                model.train()
                for a in arch:
                    a.requires_grad_(False)
                for p in weights:
                    p.requires_grad_(True)
                opt_w.zero_grad(set_to_none=True)
                loss = loss_fn(model(images), masks)
                loss.backward()
                opt_w.step()
                sums["train_loss"] += float(loss)
                n += 1
                if not searching:
                    continue
                try:
                    a_images, a_masks = model_input(next(a_batches))
                except StopIteration:  # cycle the architecture half, in a fresh order
                    a_batches = a_source.epoch(10_000 + epoch * 1_000 + n)
                    a_images, a_masks = model_input(next(a_batches))
                for a in arch:
                    a.requires_grad_(True)
                for p in weights:
                    p.requires_grad_(False)
                opt_a.zero_grad(set_to_none=True)
                opt_c.zero_grad(set_to_none=True)
                ent_a, ent_c, ram, topo = _arch_loss_terms(space, a_images.shape, ram_factor)
                a_loss = loss_fn(model(a_images), a_masks) + ramp * (ent_a + ent_c) + ram + 0.001 * topo
                a_loss.backward()
                opt_a.step()
                opt_c.step()
                sums["arch_loss"] += float(a_loss)
            for p in weights:
                p.requires_grad_(True)
            metrics = {k: v / max(n, 1) for k, v in sums.items()}
            metrics.update(trainer.validate())
            tracker.log_metrics(metrics, step=epoch + 1)
            save_checkpoint({"epoch": epoch + 1, "config": state_path.stem, "run_id": tracker.run_id,
                             "seconds": seconds_so_far(),
                             "metrics": metrics, "model": model.state_dict(), "opt_w": opt_w.state_dict(),
                             "opt_a": opt_a.state_dict(), "opt_c": opt_c.state_dict(),
                             "torch_rng": torch.get_rng_state()}, state_path)
            if show_progress:
                print(f"dints search epoch {epoch + 1}/{epochs} ({'search' if searching else 'warm-up'}): "
                      + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), file=sys.stderr)
        node_a, code_a, code_c, _ = space.decode()
        seconds = seconds_so_far()
        full_epochs = build_config(preset, []).train.epochs
        topology = {
            "node_a": np.asarray(node_a).astype(int).tolist(),
            "arch_code_a": np.asarray(code_a).astype(int).tolist(),
            "arch_code_c": np.asarray(code_c).astype(int).tolist(),
            "meta": {"source": "bench search dints", "preset": preset, "mlflow_run_id": tracker.run_id,
                     "warmup_epochs": warmup_epochs, "search_epochs": search_epochs,
                     "channel_mul_searched": channel_mul, "ram_factor": ram_factor, "seed": cfg.train.seed,
                     "final_val_dice_supernet": round(metrics["val_dice"], 4),
                     "budget_seconds": round(seconds, 1), "budget_hours": round(seconds / 3600, 4),
                     "budget_device": "GPU" if device.type == "cuda" else "CPU",
                     # a weight step and an architecture step per search batch: count both as epochs
                     "budget_full_trainings": round((epochs + search_epochs) / full_epochs, 2)},
        }
        path = save_topology(topology, out or GENOTYPE_PATH)
        tracker.log_artifact(path, "nas")
        tracker.log_metrics({"nas.budget_hours": seconds / 3600})
        status = "FINISHED"
        remove_checkpoint(state_path)
        print(f"DiNTS topology -> {path} (MLflow run {tracker.run_id}; {seconds / 3600:.2f} "
              f"{topology['meta']['budget_device']} hours)")
        return topology
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: the last finished epoch is kept
        status = "KILLED"
        print(f"dints search interrupted; rerun the same command to resume ({state_path})", file=sys.stderr)
        raise
    finally:
        tracker.finish(status)
