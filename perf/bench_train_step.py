"""Training-step throughput: the suite's loop against a like-for-like bare PyTorch loop (target: within 5%).

Suite: ``Trainer.train_epoch`` exactly as ``bench run`` calls it: batches from the training
loader (``benchmark.data.loader``: window cut from the memory-mapped cache, HU normalised,
random window + flips), the progress bar (disabled), the periodic finite-loss check,
``GradScaler`` (a no-op off CUDA), loss bookkeeping and the scheduler.
Bare: the same model (``build_model``), loss (``build_loss``), optimiser (``build_optimizer``),
batch size, memory format (channels-last exactly when the suite's config has it), threads and
AMP setting, on batches the suite's own loader cut once and that sit in memory already
converted; and nothing else: zero_grad, forward, loss, backward, step. The settings compared
are printed above each table.

The two alternate epoch by epoch (A/B/B/A...) and the medians are compared; see _common.py.
A third row, "suite data only", runs the suite's loader (and the conversion to model input)
without the model, to show how much of the step is data. Then the engine flags
(``train.channels_last``, ``train.compile``), each switched off and on with everything else
equal, and how throughput and the suite's overhead scale with patch size and batch size.

    python perf/bench_train_step.py                 # cpu preset, unet3d base_channels=8
    python perf/bench_train_step.py --preset smoke --no-compile
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def make_trainer(cfg, store):
    import torch

    from benchmark.run.train import DistInfo, Trainer
    return Trainer(cfg, store, torch.device("cpu"), DistInfo())


def with_train(cfg, **update):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def preload(cfg, store, rows, steps):
    """``steps`` augmented batches cut once by the suite's own loader, converted to model input
    (float32, channels-last when ``cfg`` says so) and kept in memory."""
    import torch

    from benchmark.data.loader import TrainBatches, to_model_input
    tb = TrainBatches(store, rows, cfg.data, cfg.train.batch_size, cfg.train.seed, steps, torch.device("cpu"))
    return [to_model_input(x, m, torch.device("cpu"), cfg.data.hu_window, cfg.train.channels_last)
            for x, m in tb.epoch(0)]


def bare_loop(cfg, batches):
    """A closure running one pass over ``batches`` with a fresh model/loss/optimiser built by the
    suite's own builders from ``cfg``."""
    import torch

    from benchmark.run.train import build_loss, build_model, build_optimizer
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    loss_fn = build_loss(cfg, model)
    opt = build_optimizer(cfg, model.parameters())

    def epoch():
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn([o.float() for o in out] if isinstance(out, (list, tuple)) else out.float(), y)
            loss.backward()
            opt.step()
        return sum(x.shape[0] for x, _ in batches)
    return epoch


def suite_loop(trainer, counter):
    def epoch():
        counter[0] += 1
        trainer.train_epoch(counter[0], show_progress=False)
        return trainer.cfg.train.batch_size * len(trainer.batches)
    return epoch


def data_only(trainer, counter):
    import torch

    from benchmark.data.loader import to_model_input
    cfg = trainer.cfg

    def epoch():
        counter[0] += 1
        n = 0
        for x, m in trainer.batches.epoch(counter[0]):
            x, _ = to_model_input(x, m, torch.device("cpu"), cfg.data.hu_window, cfg.train.channels_last)
            n += x.shape[0]
        return n
    return epoch


def settings(cfg) -> str:
    import torch
    t = cfg.train
    return (f"settings compared (both sides): {cfg.model.arch} {cfg.model.kwargs}, loss {cfg.loss.name}, "
            f"{cfg.optim.optimizer} lr {cfg.optim.lr}, patch (x,y,z) {cfg.data.patch_xyz}, batch {t.batch_size}, "
            f"channels_last={t.channels_last}, compile={t.compile}, amp=off (CPU), "
            f"{torch.get_num_threads()} intra-op thread(s), device cpu")


def row(name, res, base=None):
    r = {"loop": name, "patches/s": 1 / C.med(res["wall"]), "noise": C.spread(res["wall"]),
         "cpu-ms/patch": 1000 * C.med(res["cpu"])}
    if base is not None:
        r["wall vs bare"] = f"{C.med(base['wall']) / C.med(res['wall']):.3f}"
        r["cpu vs bare"] = f"{C.med(base['cpu']) / C.med(res['cpu']):.3f}"
    return r


COLS = ["loop", "patches/s", "noise", "cpu-ms/patch", "wall vs bare", "cpu vs bare"]


def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--arch", default="unet3d")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="optimiser steps per timed epoch")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--no-scaling", action="store_true", help="skip the patch/batch-size sweep")
    args = p.parse_args()
    presets = C.setup(args)
    reps = args.reps or 7
    print(f"machine: {C.machine()}")
    print(f"A/B repetitions per row: {reps} (+1 warm-up); the ratio columns are the suite's throughput over "
          f"the bare loop's (1.000 = equal, 0.95 = suite 5% slower)")

    for preset in presets:
        from benchmark.run.config import build_config  # after setup(): the env points at the work dir
        bs = build_config(preset).train.batch_size
        steps = min(args.steps, C.SUBSET["train"] // bs)
        n_train = bs * steps
        ov = [f"model.arch={args.arch}", f"model.kwargs.base_channels={args.base_channels}",
              f"train.steps_per_epoch={steps}", "train.device=cpu", "train.epochs=1000"]
        cfg, store = C.subset_store(preset, overrides=ov)
        rows = store.indices("train")
        desc = (f"{preset} preset: {cfg.model.arch} {cfg.model.kwargs}, patch (x,y,z) {cfg.data.patch_xyz} at "
                f"{cfg.data.spacing_mm:g} mm, batch {bs}, {steps} steps/epoch, {len(rows)} training crops")
        print(f"\n{desc}")

        # --- suite vs bare ------------------------------------------------------------------
        trainer = make_trainer(cfg, store)
        print(settings(cfg))
        cases = {"bare": bare_loop(cfg, preload(cfg, store, rows, steps)),
                 "suite": suite_loop(trainer, [0]),
                 "suite data only": data_only(trainer, [0])}
        res = C.interleaved(cases, reps, progress=f"{preset} suite/bare")
        out = [row("bare PyTorch", res["bare"]), row("suite (Trainer.train_epoch)", res["suite"], res["bare"]),
               row("suite data only (loader + conversion)", res["suite data only"])]
        share = C.med(res["suite data only"]["wall"]) / C.med(res["suite"]["wall"])
        print(C.table(out, COLS, f"{preset}: suite vs bare loop"))
        print(f"data share of the suite's step: {100 * share:.1f}% (wall)")

        # --- engine flags: each switched off and on, everything else as the preset has it ------
        base = with_train(cfg, channels_last=False, compile=False)
        print(f"flags: baseline = {settings(base)}; each row changes one flag only")
        flag_cases = {"channels_last=false, compile=false": suite_loop(make_trainer(base, store), [0]),
                      "channels_last=true": suite_loop(make_trainer(with_train(base, channels_last=True), store), [0])}
        compile_s = None
        if not args.no_compile:
            co_cfg = with_train(base, compile=True)
            try:
                t0 = time.perf_counter()
                co = make_trainer(co_cfg, store)
                co.train_epoch(0, show_progress=False)   # compilation happens on the first steps
                compile_s = time.perf_counter() - t0
                flag_cases["compile=true"] = suite_loop(co, [0])
            except Exception as e:  # noqa: BLE001 - report, do not hide: inductor needs a C++ toolchain
                print(f"torch.compile failed on this machine: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        res = C.interleaved(flag_cases, max(3, reps - 2), progress=f"{preset} flags")
        out = [row(f"suite, {k}", v, res["channels_last=false, compile=false"]) for k, v in res.items()]
        for r in out:
            r["vs both off"] = r.pop("wall vs bare")
            r["cpu vs both off"] = r.pop("cpu vs bare")
        print(C.table(out, ["loop", "patches/s", "noise", "cpu-ms/patch", "vs both off", "cpu vs both off"],
                      f"{preset}: engine flags (ratio > 1 = faster than both off)"))
        if compile_s is not None:
            print(f"torch.compile: first epoch (compilation + {steps} steps) took {compile_s:.1f} s")
        print("train.amp: only takes effect on CUDA (autocast float16 + GradScaler); not measurable here.")

        # --- scaling ------------------------------------------------------------------------
        if args.no_scaling:
            continue
        crop = cfg.data.crop_xyz
        points = []
        for frac in (0.4, 0.6, 0.8):
            # multiples of 8: unet3d's four levels halve each axis three times
            patch = tuple(max(8, int(round(c * frac / 8)) * 8) for c in crop)
            if ("patch", patch, bs) not in points:
                points.append(("patch", patch, bs))
        for b in (max(1, bs // 4), max(1, bs // 2)):
            points.append(("batch", cfg.data.patch_xyz, b))
        out = []
        for kind, patch, b in points:
            pc = cfg.model_copy(update={
                "data": cfg.data.model_copy(update={"patch_xyz": patch}),
                "train": cfg.train.model_copy(update={"batch_size": b, "steps_per_epoch": max(2, n_train // b // 2)})})
            tr = make_trainer(pc, store)
            r = C.interleaved({"bare": bare_loop(pc, preload(pc, store, rows, pc.train.steps_per_epoch)),
                               "suite": suite_loop(tr, [0])}, max(3, reps - 2), progress=f"{kind} {patch} b{b}")
            out.append({"patch (x,y,z)": "x".join(map(str, patch)), "batch": b,
                        "voxels/patch": patch[0] * patch[1] * patch[2],
                        "bare patches/s": 1 / C.med(r["bare"]["wall"]),
                        "suite patches/s": 1 / C.med(r["suite"]["wall"]),
                        "ms/patch (bare)": 1000 * C.med(r["bare"]["wall"]),
                        "suite vs bare": f"{C.med(r['bare']['wall']) / C.med(r['suite']['wall']):.3f}",
                        "cpu vs bare": f"{C.med(r['bare']['cpu']) / C.med(r['suite']['cpu']):.3f}"})
        print(C.table(out, list(out[0]), f"{preset}: scaling with patch size and batch size "
                                         f"({cfg.model.arch} base {args.base_channels})"))


if __name__ == "__main__":
    main()
