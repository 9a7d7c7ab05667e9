"""``bench search dints``: DiNTS's topology search on this data, with MONAI's own search space.

    bench search dints --preset cpu [--warmup-epochs 10] [--epochs 20] [--ram-target 0.4] [--out PATH]

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
  epochs), the memory term |ram_target - usage / full usage| (MONAI's ``get_ram_cost_usage``)
  and 0.001 x the topology entropy;
* the result is decoded at the declared cost target (``dints_space.decode_within``: MONAI's
  ``TopologySearch.decode()``, constrained so the decoded topology's memory ratio is at most
  ``ram_target``), written as ``architectures/dints_genotype.json`` with its MLflow run, the
  paths it keeps of all, its cost ratio, its MACs and the U-Net's at the preset, and the budget.

The target is a ratio of MONAI's memory estimate (kept paths / all paths, same ops). At
initialisation every path has probability ~0.5, so ``usage / full`` starts near 0.5: MONAI's
tutorial target 0.8 makes the search *add* paths (the first cpu search kept all 42 of 42 and
only chose cell ops); a target below 0.5 prunes. Default 0.4.

Tracking (one MLflow run, tag ``nas.searcher=dints``): per epoch the losses, the validation
Dice of the super-network, every path's probability (``p_a.b<block>.p<path>``), the path and op
entropies, the memory ratio and the paths an unconstrained decode would keep; at the end the
decoded genotype (artifact ``nas/``), its paths kept, cost ratio, MACs and the budget in seconds.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from benchmark.core.errors import UsageError

W_LR, A_LR = 0.025, 1e-3
#: the declared resource target of a search: memory ratio of the decoded topology (see above)
RAM_TARGET = 0.4


def _split_train(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the training rows and halve them: (weight half, architecture half)."""
    rng = np.random.default_rng(seed)
    rows = rows[rng.permutation(len(rows))]
    half = max(1, len(rows) // 2)
    return np.sort(rows[:half]), np.sort(rows[half:] if len(rows) > 1 else rows)


def _arch_loss_terms(space, images_shape, ram_target: float):
    """Regularisers of the architecture step: (path entropy, op entropy, memory, topology entropy)."""
    import torch
    import torch.nn.functional as F
    probs_a, _ = space.get_prob_a(child=True)
    entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
    entropy_c = -(F.softmax(space.log_alpha_c, dim=-1) * F.log_softmax(space.log_alpha_c, dim=-1)).mean()
    full = space.get_ram_cost_usage(images_shape, full=True)
    usage = space.get_ram_cost_usage(images_shape)
    ram = torch.abs(ram_target - usage / full)
    return entropy_a, entropy_c, ram, space.get_topology_entropy(probs_a)


def space_metrics(space, images_shape) -> dict:
    """Where the architecture parameters stand: every path's probability, the mean binary entropy
    of the paths and the mean entropy of the op softmax, the memory ratio and the paths an
    unconstrained decode keeps."""
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        _, p = space.get_prob_a(child=False)
        p = p.clamp(1e-6, 1 - 1e-6)
        ent_a = float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
        ent_c = float(-(F.softmax(space.log_alpha_c, -1) * F.log_softmax(space.log_alpha_c, -1)).sum(-1).mean())
        ratio = float(space.get_ram_cost_usage(images_shape) / space.get_ram_cost_usage(images_shape, full=True))
    out = {f"p_a.b{b}.p{q}": float(p[b, q]) for b in range(p.shape[0]) for q in range(p.shape[1])}
    out.update({"entropy_paths": ent_a, "entropy_ops": ent_c, "ram_ratio": ratio,
                "decoded_paths": float(np.asarray(space.decode()[1]).sum())})
    return out


def search_state_path(preset: str, warmup_epochs: int, search_epochs: int, overrides: list[str],
                      channel_mul: float, num_blocks: int, num_depths: int, ram_target: float) -> Path:
    """The resumable state of a search with these settings (another setting, another search)."""
    from benchmark.core.paths import runs_dir
    key = json.dumps([preset, warmup_epochs, search_epochs, list(overrides), channel_mul, num_blocks,
                      num_depths, ram_target])
    return runs_dir() / "nas" / f"dints-search-{preset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


@dataclass
class _Search:
    """What one search trains: the space, the model around it, its optimisers and batch sources."""
    trainer: object
    space: object
    model: object
    arch: list
    weights: list
    opt_w: object
    opt_a: object
    opt_c: object
    w_source: object
    a_source: object
    device: object
    hu_window: object

    def batch(self, raw):
        from benchmark.data.loader import to_model_input
        return to_model_input(*raw, self.device, self.hu_window)

    def train_only(self, params_on):
        for a in self.arch:
            a.requires_grad_(params_on == "arch")
        for p in self.weights:
            p.requires_grad_(params_on == "weights")


def _build(cfg, store, device, dist, channel_mul: float, num_blocks: int, num_depths: int) -> _Search:
    import torch
    from monai.networks.nets import DiNTS, TopologySearch

    from architectures._layers import PadToMultiple
    from benchmark.data.loader import TrainBatches
    from benchmark.run.train import Trainer
    trainer = Trainer(cfg, store, device, dist)  # train/val rows, loss, validation; model replaced below
    space = TopologySearch(channel_mul=channel_mul, num_blocks=num_blocks, num_depths=num_depths,
                           use_downsample=True, spatial_dims=3, device=str(device))
    net = DiNTS(dints_space=space, in_channels=1, num_classes=1, use_downsample=True).to(device)
    model = PadToMultiple(net, 2 ** (num_depths + 1))
    trainer.model = trainer.net = model
    # DiNTS.weight_parameters() also returns the alphas: filter them out by identity
    arch = [space.log_alpha_a, space.log_alpha_c]
    weights = [p for p in model.parameters() if all(p is not a for a in arch)]
    w_rows, a_rows = _split_train(trainer.train_rows, cfg.train.seed)
    bs, steps = cfg.train.batch_size, cfg.train.max_steps()
    # the weight half and the architecture half, each with its own seeded epoch order
    return _Search(trainer, space, model, arch, weights,
                   torch.optim.SGD(weights, lr=W_LR, momentum=0.9, weight_decay=4e-5),
                   torch.optim.Adam([space.log_alpha_a], lr=A_LR, betas=(0.5, 0.999), weight_decay=0.0),
                   torch.optim.Adam([space.log_alpha_c], lr=A_LR, betas=(0.5, 0.999), weight_decay=0.0),
                   TrainBatches(store, w_rows, cfg.data, bs, cfg.train.seed, steps, device),
                   TrainBatches(store, a_rows, cfg.data, bs, cfg.train.seed + 1, None, device),
                   device, cfg.data.hu_window)


def _search_epoch(s: _Search, epoch: int, warmup_epochs: int, search_epochs: int, ram_target: float) -> dict:
    """One epoch: weight steps on the "w" half, each followed (after warm-up) by an
    architecture step on the next "a" batch; returns the mean losses."""
    searching = epoch >= warmup_epochs
    k = epoch - warmup_epochs
    for g in s.opt_w.param_groups:  # halved at 40 % and 80 % of the search epochs
        g["lr"] = W_LR * (0.5 ** ((k >= 0.4 * search_epochs) + (k >= 0.8 * search_epochs)) if searching else 1.0)
    ramp = (k + 1) / search_epochs if searching else 0.0
    loss_fn = s.trainer.loss_fn
    a_batches = s.a_source.epoch(epoch)
    sums, n = {"train_loss": 0.0, "arch_loss": 0.0}, 0
    for raw in s.w_source.epoch(epoch):
        images, masks = s.batch(raw)
        s.model.train()
        s.train_only("weights")
        s.opt_w.zero_grad(set_to_none=True)
        loss = loss_fn(s.model(images), masks)
        loss.backward()
        s.opt_w.step()
        sums["train_loss"] += float(loss)
        n += 1
        if not searching:
            continue
        try:
            a_images, a_masks = s.batch(next(a_batches))
        except StopIteration:  # cycle the architecture half, in a fresh order
            a_batches = s.a_source.epoch(10_000 + epoch * 1_000 + n)
            a_images, a_masks = s.batch(next(a_batches))
        s.train_only("arch")
        s.opt_a.zero_grad(set_to_none=True)
        s.opt_c.zero_grad(set_to_none=True)
        ent_a, ent_c, ram, topo = _arch_loss_terms(s.space, a_images.shape, ram_target)
        a_loss = loss_fn(s.model(a_images), a_masks) + ramp * (ent_a + ent_c) + ram + 0.001 * topo
        a_loss.backward()
        s.opt_a.step()
        s.opt_c.step()
        sums["arch_loss"] += float(a_loss)
    s.train_only("weights")
    return {k: v / max(n, 1) for k, v in sums.items()}


def run_dints_search(preset: str, warmup_epochs: int, search_epochs: int, overrides: list[str],
                     out: Optional[Path] = None, channel_mul: float = 0.25, num_blocks: int = 6,
                     num_depths: int = 3, ram_target: float = RAM_TARGET, show_progress: bool = True) -> dict:
    """Search, decode at the target, log to MLflow, write the genotype; returns the genotype dict."""
    import torch

    from benchmark.core.checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
    from benchmark.data import load_crops
    from benchmark.run.config import build_config
    from benchmark.run.train import DistInfo, pick_device, seed_everything

    if warmup_epochs < 0 or search_epochs < 1:
        raise UsageError("--warmup-epochs must be >= 0 and --epochs >= 1")
    if not 0.0 < ram_target <= 1.0:
        raise UsageError(f"--ram-target must be in (0, 1], got {ram_target}")
    epochs = warmup_epochs + search_epochs
    cfg = build_config(preset, [f"train.epochs={epochs}", *overrides], **{"model.arch": "dints"})
    dist = DistInfo()
    device = pick_device(cfg, dist)
    store = load_crops(cfg.data)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    settings = dict(channel_mul=channel_mul, num_blocks=num_blocks, num_depths=num_depths, ram_target=ram_target)
    state_path = search_state_path(preset, warmup_epochs, search_epochs, overrides, **settings)
    state = load_checkpoint(state_path) if state_path.exists() else None
    tracker = _open_tracker(state, state_path, preset, cfg, warmup_epochs, search_epochs, epochs, settings)
    c0, w0 = time.process_time(), time.perf_counter()
    spent = state["seconds"] if state else 0.0      # seconds of the search's earlier processes

    def seconds_so_far() -> float:
        return spent + ((time.perf_counter() - w0) if device.type == "cuda" else (time.process_time() - c0))
    status = "FAILED"
    try:
        s = _build(cfg, store, device, dist, channel_mul, num_blocks, num_depths)
        in_size = (cfg.train.batch_size, 1, *cfg.data.patch_zyx)
        first_epoch, metrics = 0, {}
        if state:
            s.model.load_state_dict(state["model"])
            for opt, name in ((s.opt_w, "opt_w"), (s.opt_a, "opt_a"), (s.opt_c, "opt_c")):
                opt.load_state_dict(state[name])
            torch.set_rng_state(state["torch_rng"])
            first_epoch, metrics = state["epoch"], state["metrics"]
        for epoch in range(first_epoch, epochs):
            metrics = _search_epoch(s, epoch, warmup_epochs, search_epochs, ram_target)
            metrics.update(s.trainer.validate())
            tracker.log_metrics({**metrics, **space_metrics(s.space, in_size)}, step=epoch + 1)
            save_checkpoint({"epoch": epoch + 1, "config": state_path.stem, "run_id": tracker.run_id,
                             "seconds": seconds_so_far(), "metrics": metrics, "model": s.model.state_dict(),
                             "opt_w": s.opt_w.state_dict(), "opt_a": s.opt_a.state_dict(),
                             "opt_c": s.opt_c.state_dict(), "torch_rng": torch.get_rng_state()}, state_path)
            if show_progress:
                print(f"dints search epoch {epoch + 1}/{epochs} "
                      f"({'search' if epoch >= warmup_epochs else 'warm-up'}): "
                      + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), file=sys.stderr)
        topology = _finish(s.space, in_size, tracker, preset, cfg, metrics, seconds_so_far(), out,
                           warmup_epochs, search_epochs, settings)
        status = "FINISHED"
        remove_checkpoint(state_path)
        return topology
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: the last finished epoch is kept
        status = "KILLED"
        print(f"dints search interrupted; rerun the same command to resume ({state_path})", file=sys.stderr)
        raise
    finally:
        tracker.finish(status)


def _open_tracker(state, state_path: Path, preset: str, cfg, warmup_epochs: int, search_epochs: int, epochs: int,
                  settings: dict):
    from benchmark.core.tracking import Tracker
    if state:
        print(f"dints search: resuming MLflow run {state['run_id']} after epoch {state['epoch']}/{epochs} "
              f"({state_path})", file=sys.stderr)
        return Tracker.resume(state["run_id"])
    tracker = Tracker.start(f"dints-search-{preset}", {"nas.searcher": "dints", "nas.space": "dints", "kind": "nas",
                                                       "preset": preset, "arch": "dints"})
    tracker.log_params({**cfg.flat(), "search.warmup_epochs": warmup_epochs, "search.epochs": search_epochs,
                        **{f"search.{k}": v for k, v in settings.items()}})
    return tracker


def _finish(space, in_size, tracker, preset: str, cfg, metrics: dict, seconds: float, out: Optional[Path],
            warmup_epochs: int, search_epochs: int, settings: dict) -> dict:
    """Decode at the target, count MACs beside the U-Net's, write and log the genotype."""
    from architectures.dints import GENOTYPE_PATH, save_topology
    from benchmark.campaigns.dints_space import decode_within
    from benchmark.campaigns.search_cost import macs_at_preset
    from benchmark.run.config import build_config
    decoded = decode_within(space, settings["ram_target"], in_size)
    code_a = np.asarray(decoded["arch_code_a"])
    kept, total = int(code_a.sum()), int(code_a.size)
    genotype = {k: decoded[k] for k in ("node_a", "arch_code_a", "arch_code_c")}
    macs = macs_at_preset(preset, "dints", topology=genotype)
    unet_macs = macs_at_preset(preset, "unet3d")
    full_epochs = build_config(preset, []).train.epochs
    epochs = warmup_epochs + search_epochs
    device = "GPU" if str(space.device).startswith("cuda") else "CPU"
    topology = {**genotype, "meta": {
        "source": "bench search dints", "preset": preset, "mlflow_run_id": tracker.run_id,
        "warmup_epochs": warmup_epochs, "search_epochs": search_epochs, "seed": cfg.train.seed,
        "channel_mul_searched": settings["channel_mul"], "ram_target": settings["ram_target"],
        "cost_ratio": round(decoded["cost_ratio"], 4),
        "cost_ratio_unconstrained_decode": round(decoded["unconstrained_cost_ratio"], 4),
        "decode_lambda": round(decoded["lam"], 6), "paths_kept": kept, "paths_total": total,
        "macs_per_patch": macs, "unet3d_macs_per_patch": unet_macs,
        "final_val_dice_supernet": round(metrics.get("val_dice", float("nan")), 4),
        "budget_seconds": round(seconds, 1), "budget_hours": round(seconds / 3600, 4), "budget_device": device,
        # a weight step and an architecture step per search batch: count both as epochs
        "budget_full_trainings": round((epochs + search_epochs) / full_epochs, 2)}}
    path = save_topology(topology, out or GENOTYPE_PATH)
    tracker.log_artifact(path, "nas")
    tracker.log_text(json.dumps(genotype) + "\n", "nas/decoded_genotype.json")
    tracker.log_metrics({"nas.budget_hours": seconds / 3600, "nas.budget_seconds": seconds, "nas.paths_kept": kept,
                         "nas.cost_ratio": decoded["cost_ratio"], "nas.macs_per_patch": macs,
                         "nas.unet3d_macs_per_patch": unet_macs})
    tracker.set_tags({"nas.paths_kept": f"{kept}/{total}", "nas.genotype_file": Path(path).name})
    print(f"DiNTS topology -> {path} (MLflow run {tracker.run_id}): {kept} of {total} paths kept, cost ratio "
          f"{decoded['cost_ratio']:.3f} (target {settings['ram_target']}), {macs / 1e9:.3f} GMACs per patch "
          f"(unet3d {unet_macs / 1e9:.3f}); {seconds / 3600:.2f} {device} hours")
    return topology
