"""Data loading: patches/s the batchers deliver against patches/s the model consumes.

Batchers measured (the same training crops, batch, steps and thread count; every one delivers
float32 windows normalised to [0, 1], random window + x/y flips included):
  * the batcher before issue 19 (kept in this script as the reference): whole crops read and
    normalised in numpy, then windowed;
  * the suite's loader (``benchmark.data.loader.TrainBatches``, what ``Trainer.train_epoch``
    uses) in-process (``data.num_workers=0``) and with ``--workers`` worker processes
    (persistent, so the figure is steady state, not worker start-up), and with
    ``data.on_device=true`` (crops held as one tensor, batches cut by a gather; here on the CPU).
Consumption: a bare training step (the suite's loss and optimiser, forward, backward, step) of
unet3d at ``--base-channels`` (default 8) on in-memory batches, and of the preset's own size.

"headroom" = loader patches/s / model patches/s: above 1 the loader can keep up. In-process
batches add their cost to every step instead of overlapping; the "stall" column is that share
of a step (1 / (1 + headroom)). With workers the cost overlaps the step where spare cores exist
(not on this 2-core machine, where workers compete with the model for the same cores).

The paper preset's 1 mm cache is rarely built on a CPU machine, so the script builds a small
1 mm subset (``load_crops`` with nodule ids) in its private work folder on first use; the
crop arrays are real phantom crops, not synthetic arrays.

No GPU: what a GPU would consume is not measured. Instead the script prints each batcher's
break-even rate: the effective training FLOP rate (taken as 3 x the forward MACs counted by
``benchmark.run.cost.count_macs``, 2 FLOPs per MAC) above which the device would wait for that
batcher. Compare it with what a given GPU sustains on this model when one is available.

    python perf/bench_loader.py                     # cpu and paper presets
    python perf/bench_loader.py --preset cpu --reps 3
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from bench_train_step import bare_loop, preload  # noqa: E402


def whole_crop_first(cfg, store, rows, steps):
    """The batcher before issue 19, kept here as the reference: read a batch's whole crops
    through ``store.images`` (float16 -> float32 and normalisation of the whole 80x80x40 crop in
    numpy), then cut the random window and flip (``augment.random_window``)."""
    import numpy as np
    import torch

    from benchmark.data.augment import random_window
    from benchmark.data.loader import epoch_permutation
    bs, patch = cfg.train.batch_size, cfg.data.patch_zyx
    counter = [0]

    def run():
        counter[0] += 1
        gen = torch.Generator().manual_seed(counter[0])
        perm = rows[epoch_permutation(0, counter[0], len(rows))]
        n = 0
        for b in range(min(steps, len(perm) // bs)):
            sel = np.sort(perm[b * bs:(b + 1) * bs])
            images = torch.from_numpy(np.ascontiguousarray(store.images[sel], dtype=np.float32)).unsqueeze(1)
            masks = torch.from_numpy(np.ascontiguousarray(store.gt[sel], dtype=np.float32)).unsqueeze(1)
            images, masks = random_window(images, masks, patch, gen)
            n += images.shape[0]
        return n
    return run


def suite_loader(cfg, store, rows, steps, **data):
    """The suite's training loader with ``data`` settings, up to the model's float32 input."""
    import torch

    from benchmark.data.loader import TrainBatches, to_model_input
    dcfg = cfg.data.model_copy(update=data)
    tb = TrainBatches(store, rows, dcfg, cfg.train.batch_size, 0, steps, torch.device("cpu"))
    counter = [0]

    def run():
        counter[0] += 1
        n = 0
        for x, m in tb.epoch(counter[0]):
            x, m = to_model_input(x, m, torch.device("cpu"), dcfg.hu_window)
            n += x.shape[0]
        return n
    return run, tb


def batcher_cases(cfg, store, rows, steps, workers):
    cases = {"before issue 19: whole crop, then window": whole_crop_first(cfg, store, rows, steps)}
    keep = []
    for w in (0, workers):
        fn, tb = suite_loader(cfg, store, rows, steps, num_workers=w)
        cases[f"suite loader, num_workers={w}"] = fn
        keep.append(tb)
    fn, tb = suite_loader(cfg, store, rows, steps, on_device=True)
    cases["suite loader, on_device=true (device = this CPU)"] = fn
    keep.append(tb)
    return cases, keep


def main():
    p = C.parser(__doc__.splitlines()[0], presets=("cpu", "paper"))
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="worker processes of the multi-process row")
    p.add_argument("--skip-preset-model", action="store_true",
                   help="do not time the preset's own unet3d size (slow at the paper size on a CPU)")
    args = p.parse_args()
    presets = C.setup(args)
    reps = args.reps or 5
    print(f"machine: {C.machine()}")

    from benchmark.run.config import build_config
    from benchmark.run.cost import count_macs
    from benchmark.run.train import build_model
    out = []
    for preset in presets:
        bs = build_config(preset).train.batch_size
        steps = C.SUBSET["train"] // bs
        cfg, store = C.subset_store(preset, overrides=["model.arch=unet3d", "train.device=cpu"])
        rows = store.indices("train")
        print(f"\n{preset}: patch (x,y,z) {cfg.data.patch_xyz} at {cfg.data.spacing_mm:g} mm from crops "
              f"{cfg.data.crop_xyz}, batch {bs}, {len(rows)} training crops", flush=True)

        print(f"  every batcher: the same {len(rows)} crops, batch {bs}, {steps} steps per timed epoch, output "
              f"float32 (B, 1, Z, Y, X) windows normalised to [0, 1], random window + x/y flips; "
              f"{C.threads()} intra-op thread(s) in this process", flush=True)
        cases, loaders = batcher_cases(cfg, store, rows, steps, args.workers)
        res = C.interleaved(cases, reps, progress=f"{preset} loaders")
        del loaders

        # consumption: small model always; the preset's own size unless skipped
        models = [("unet3d base %d" % args.base_channels, {"base_channels": args.base_channels})]
        own = cfg.model.kwargs.get("base_channels", 32)
        if not args.skip_preset_model and own != args.base_channels:
            models.append((f"unet3d base {own} (preset)", {"base_channels": own}))
        consume = {}
        for label, kw in models:
            mcfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"kwargs": kw})})
            # the big model gets a batch of 2: a full batch of 16 at 64x64x32 takes minutes per
            # step on one core, and per-patch cost is close to linear in the batch here
            if kw["base_channels"] >= 16 and preset == "paper":
                mcfg = mcfg.model_copy(update={"train": mcfg.train.model_copy(update={"batch_size": 2})})
            batches = preload(mcfg, store, rows, 1 if preset == "paper" else 2)
            r = C.interleaved({label: bare_loop(mcfg, batches)}, 2 if preset == "paper" else 3,
                              progress=f"{preset} {label}")
            macs = count_macs(build_model(mcfg), (1, 1, *cfg.data.patch_zyx))
            consume[label] = (1 / C.med(r[label]["wall"]), macs)

        for name, v in res.items():
            rate = 1 / C.med(v["wall"])
            row = {"preset": preset, "batcher": name, "patches/s": rate, "noise": C.spread(v["wall"])}
            for label, (mrate, macs) in consume.items():
                h = rate / mrate
                row[f"headroom vs {label}"] = f"{h:.0f}x (stall {100 / (1 + h):.1f}%)"
            out.append(row)
        for label, (mrate, macs) in consume.items():
            print(f"  model {label}: {mrate:.2f} patches/s on this CPU, {macs / 1e9:.2f} GMAC/patch forward; "
                  f"break-even device rate (TFLOP/s) per batcher: "
                  + ", ".join(f"{n} {6 * macs / C.med(v['wall']) / 1e12:.2f}" for n, v in res.items()))

    cols = ["preset", "batcher", "patches/s", "noise"] + sorted({k for r in out for k in r if k.startswith("headroom")})
    print(C.table(out, cols, "loader throughput vs model consumption (this CPU)"))


if __name__ == "__main__":
    main()
