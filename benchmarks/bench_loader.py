"""Data loading: patches/s the batchers deliver against patches/s the model consumes.

Batchers measured (each over the same training crops, augmentation included):
  * ``train_batches`` — what ``Trainer.train_epoch`` uses: sorted memmap read of a batch's rows,
    HU normalisation, random window + x/y flips on the batched tensor, in the training process;
  * ``PatchDataset`` + ``torch.utils.data.DataLoader`` with 0 and 2 worker processes
    (persistent workers, so the figure is steady state, not worker start-up).
Consumption: a bare training step (forward, Dice+CE, backward, Adam) of unet3d at
``--base-channels`` (default 8) on in-memory batches, and of the preset's own unet3d size.

"headroom" = loader patches/s / model patches/s: above 1 the loader can keep up. Because
``train_batches`` runs in the training process, its cost adds to every step instead of
overlapping; the "stall" column is that share of a step (1 / (1 + headroom)).

The paper preset's 1 mm cache is rarely built on a CPU machine, so the script builds a small
1 mm subset (``load_crops`` with nodule ids) in its private work folder on first use; the
crop arrays are real phantom crops, not synthetic arrays.

No GPU: what a GPU would consume is not measured. Instead the script prints each batcher's
break-even rate: the effective training FLOP rate (taken as 3 x the forward MACs counted by
``benchmark.cost.count_macs``, 2 FLOPs per MAC) above which the device would wait for that
batcher. Compare it with what a given GPU sustains on this model when one is available.

    python benchmarks/bench_loader.py                     # cpu and paper presets
    python benchmarks/bench_loader.py --preset cpu --reps 3
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from bench_train_step import bare_loop, preload  # noqa: E402


def window_first_batches(cfg, store, rows, steps):
    """A PROPOSAL, not the suite: ``train_batches`` with the same draws, but cutting each window
    out of the float16/uint8 memmaps before converting, and converting with torch. The store's
    numpy float16 -> float32 conversion and normalisation of the whole crop dominate
    ``train_batches``; this row measures what moving them after the window would give. It reads
    the cache files directly, so it only runs on a store that spans its whole cache."""
    import numpy as np
    import torch

    from benchmark.data.augment import window_offsets
    from benchmark.train import DistInfo, epoch_generator, train_batches
    raw_i = np.load(store.path / "images.npy", mmap_mode="r")
    raw_g = np.load(store.path / "gt.npy", mmap_mode="r")
    if raw_i.shape[0] != len(store):
        return None
    lo, hi = store.hu_window
    bs, patch = cfg.train.batch_size, cfg.data.patch_zyx
    crop = raw_i.shape[1:]

    def batches(gen):
        perm = rows[torch.randperm(len(rows), generator=gen).numpy()]
        for b in range(min(steps, len(perm) // bs)):
            sel = np.sort(perm[b * bs:(b + 1) * bs])
            offs = window_offsets(crop, patch, gen, len(sel))        # same draws, same order as
            flips = torch.rand(len(sel), 2, generator=gen) < 0.5     # random_window's
            ims, gts = [], []
            for k, row in enumerate(sel):
                z, y, x = offs[k].tolist()
                win = (int(row), slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                im = torch.from_numpy(np.ascontiguousarray(raw_i[win])).float().sub_(lo).div_(hi - lo).clamp_(0, 1)
                gt = torch.from_numpy(np.ascontiguousarray(raw_g[win])).float()
                dims = [d for d, f in zip((-1, -2), flips[k].tolist()) if f]
                ims.append(im.flip(dims) if dims else im)
                gts.append(gt.flip(dims) if dims else gt)
            yield torch.stack(ims)[:, None], torch.stack(gts)[:, None]

    # the proposal must be a drop-in: same tensors as the suite's batcher for the same seed
    for (a, am), (b, bm) in zip(train_batches(store, rows, bs, patch, epoch_generator(0, 99), DistInfo(), steps),
                                batches(epoch_generator(0, 99))):
        if not (torch.allclose(a, b, atol=1e-6) and torch.equal(am, bm)):
            raise AssertionError("window-first prototype differs from train_batches")
    counter = [0]

    def run():
        counter[0] += 1
        return sum(x.shape[0] for x, _ in batches(epoch_generator(0, counter[0])))
    return run


def batcher_cases(cfg, store, rows, steps):
    import torch

    from benchmark.data.augment import PatchDataset
    from benchmark.train import DistInfo, epoch_generator, train_batches
    bs = cfg.train.batch_size
    counter = [0]

    def suite():
        counter[0] += 1
        n = 0
        for x, _ in train_batches(store, rows, bs, cfg.data.patch_zyx, epoch_generator(0, counter[0]),
                                  DistInfo(), steps):
            n += x.shape[0]
        return n

    def loader_case(workers):
        ds = PatchDataset(store, rows, cfg.data.patch_zyx, train=True, seed=0)
        dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))

        def run():
            ds.set_epoch(ds.epoch + 1)   # workers hold a copy: only matters for workers=0
            n = 0
            for i, (x, _, _) in enumerate(dl):
                n += x.shape[0]
                if i + 1 >= steps:
                    break
            return n
        return run, dl

    cases = {"train_batches (suite)": suite}
    proto = window_first_batches(cfg, store, rows, steps)
    if proto is not None:
        cases["prototype: window first, torch f16->f32"] = proto
    loaders = []
    for w in (0, 2):
        fn, dl = loader_case(w)
        cases[f"DataLoader, {w} workers"] = fn
        loaders.append(dl)
    return cases, loaders


def main():
    p = C.parser(__doc__.splitlines()[0], presets=("cpu", "paper"))
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--skip-preset-model", action="store_true",
                   help="do not time the preset's own unet3d size (slow at the paper size on a CPU)")
    args = p.parse_args()
    presets = C.setup(args)
    reps = args.reps or 5
    print(f"machine: {C.machine()}")

    from benchmark.config import build_config
    from benchmark.cost import count_macs
    from benchmark.train import build_model
    out = []
    for preset in presets:
        bs = build_config(preset).train.batch_size
        steps = C.SUBSET["train"] // bs
        cfg, store = C.subset_store(preset, overrides=["model.arch=unet3d", "train.device=cpu"])
        rows = store.indices("train")
        print(f"\n{preset}: patch (x,y,z) {cfg.data.patch_xyz} at {cfg.data.spacing_mm:g} mm from crops "
              f"{cfg.data.crop_xyz}, batch {bs}, {len(rows)} training crops", flush=True)

        cases, loaders = batcher_cases(cfg, store, rows, steps)
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
