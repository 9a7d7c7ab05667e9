"""GPU check: does the suite keep an accelerator busy on the paper preset? (issue 19; a few minutes)

Trains the paper preset (1 mm, 64x64x32 patches, batch 16, AMP; unet3d at the paper's size
unless ``--arch``) for a fixed number of optimiser steps in three ways and reports, for each,
the step time, the share of it the training loop spent waiting for its next batch, the GPU
utilisation (``torch.cuda.utilization``, i.e. NVML, sampled every 50 ms; ``nvidia-smi`` if NVML
is missing) and the peak GPU memory:

  * ``suite, loader workers``: ``Trainer.train_epoch`` exactly as ``bench run`` calls it, with
    the DataLoader's worker processes (``data.num_workers``, auto by default);
  * ``suite, on_device``: the same with ``data.on_device=true`` (crops held on the GPU);
  * ``bare loop, device-resident data``: the same model, loss, optimiser, AMP, memory format
    and batch size on batches already on the GPU, and nothing else (the best a loader can give).

Targets (issue 19): data wait < 10 % of the step; suite step within 10 % of the bare loop.
The data are a deterministic subset of the phantom (``--train-nodules``), built in the private
work folder on first use. Exits at once with one line when no CUDA device is present.

    python perf/gpu_check.py --steps 200 --out gpu_check.json
    python perf/gpu_check.py --arch transfuse --set train.deterministic=true
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TARGET_WAIT = 0.10
TARGET_VS_BARE = 1.10


class UtilSampler:
    """Mean GPU utilisation (%) over a block, sampled in a background thread."""

    def __init__(self, device_index: int, every_s: float = 0.05):
        self.index, self.every = device_index, every_s
        self.samples: list[float] = []
        self.source = "unavailable"

    def _read(self):
        import torch
        try:
            v = float(torch.cuda.utilization(self.index))
            self.source = "torch.cuda.utilization (NVML)"
            return v
        except Exception:  # noqa: BLE001 - no pynvml: fall back to nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.source = "nvidia-smi"
                return float(out.stdout.strip().splitlines()[0])
        return None

    def __enter__(self):
        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set():
                v = self._read()
                if v is not None:
                    self.samples.append(v)
                self._stop.wait(self.every)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


class TimedBatches:
    """Wraps ``Trainer.batches`` to add up the time the loop waits in ``next()`` for a batch."""

    def __init__(self, inner):
        self.inner, self.wait_s, self.steps = inner, 0.0, 0

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def epoch(self, epoch):
        it = iter(self.inner.epoch(epoch))
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - t0
            self.steps += 1
            yield batch


def measure_suite(cfg, store, steps: int, warmup_epochs: int = 1) -> dict:
    import torch

    from benchmark.run.train import DistInfo, Trainer
    device = torch.device("cuda", 0)
    trainer = Trainer(cfg, store, device, DistInfo())
    for e in range(warmup_epochs):   # worker start-up, cuDNN autotuning, allocator warm-up
        trainer.train_epoch(e, show_progress=False)
    timed = TimedBatches(trainer.batches)
    trainer.batches = timed
    epochs = math.ceil(steps / len(timed))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with UtilSampler(0) as util:
        t0 = time.perf_counter()
        for e in range(warmup_epochs, warmup_epochs + epochs):
            trainer.train_epoch(e, show_progress=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"steps": timed.steps, "step_ms": 1000 * wall / timed.steps, "data_wait": timed.wait_s / wall,
            "gpu_util_pct": util.mean, "util_source": util.source,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
            "loader_workers": timed.inner.num_workers, "on_device": timed.inner.on_device}


def measure_bare(cfg, store, steps: int, warmup: int = 10) -> dict:
    import torch

    from benchmark.data.loader import TrainBatches, to_model_input
    from benchmark.run.train import build_loss, build_model, build_optimizer
    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = not cfg.train.deterministic
    rows = store.indices("train")
    tb = TrainBatches(store, rows, cfg.data.model_copy(update={"on_device": True}), cfg.train.batch_size,
                      cfg.train.seed, None, device)
    batches = [to_model_input(x, m, device, cfg.data.hu_window, cfg.train.channels_last) for x, m in tb.epoch(0)]
    del tb
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    loss_fn = build_loss(cfg, model)
    opt = build_optimizer(cfg, model.parameters(), fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp)

    def step(k):
        x, y = batches[k % len(batches)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=cfg.train.amp):
            out = model(x)
        loss = loss_fn([o.float() for o in out] if isinstance(out, (list, tuple)) else out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for k in range(warmup):
        step(k)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with UtilSampler(0) as util:
        t0 = time.perf_counter()
        for k in range(steps):
            step(k)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"steps": steps, "step_ms": 1000 * wall / steps, "data_wait": 0.0, "gpu_util_pct": util.mean,
            "util_source": util.source, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
            "loader_workers": 0, "on_device": True}


def main():
    p = C.parser(__doc__.splitlines()[0], presets=("paper",))
    p.add_argument("--steps", type=int, default=200, help="timed optimiser steps per row (default 200)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--arch", default="unet3d")
    p.add_argument("--train-nodules", type=int, default=256,
                   help="training crops in the subset (default 256: 16 steps per epoch at batch 16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row, e.g. data.num_workers=8 (repeatable)")
    p.set_defaults(threads=None)
    args = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available here; run it on a machine with a GPU", file=sys.stderr)
        sys.exit(2)
    if args.threads is None:   # the training process's own default, as in `bench run`
        args.threads = torch.get_num_threads()
    presets = C.setup(args)
    from benchmark.data.loader import usable_cores
    t_start = time.perf_counter()
    print(f"machine: {C.machine()}")
    out = {"machine": C.machine(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "rows": {}}
    for preset in presets:
        overrides = [f"model.arch={args.arch}", "train.device=cuda", "train.deterministic=false",
                     "train.steps_per_epoch=null", *args.set]
        cfg, store = C.subset_store(preset, {"train": args.train_nodules, "val": 2, "test": 2}, overrides,
                                    workers=max(1, usable_cores() - 1))
        t = cfg.train
        out["settings"] = (f"{preset} preset, {cfg.model.arch} {cfg.model.kwargs}, loss {cfg.loss.name}, "
                           f"patch (x,y,z) {cfg.data.patch_xyz} at {cfg.data.spacing_mm:g} mm, batch {t.batch_size}, "
                           f"amp={t.amp}, channels_last={t.channels_last}, deterministic={t.deterministic}, "
                           f"compile={t.compile}, {len(store.indices('train'))} training crops")
        print(out["settings"], flush=True)
        rows = {
            "suite, loader workers": lambda: measure_suite(cfg, store, args.steps),
            "suite, on_device": lambda: measure_suite(
                cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_device": True})}), store, args.steps),
            "bare loop, device-resident data": lambda: measure_bare(cfg, store, args.steps),
        }
        for name, fn in rows.items():
            print(f"  {name} ...", file=sys.stderr, flush=True)
            out["rows"][name] = fn()
            torch.cuda.empty_cache()
    bare = out["rows"]["bare loop, device-resident data"]["step_ms"]
    table = []
    for name, r in out["rows"].items():
        r["vs_bare"] = r["step_ms"] / bare
        table.append({"row": name, "step ms": r["step_ms"], "data wait": f"{100 * r['data_wait']:.1f}%",
                      "GPU util": f"{r['gpu_util_pct']:.0f}%", "peak GB": r["peak_mem_gb"],
                      "vs bare": f"{r['vs_bare']:.3f}", "workers": r["loader_workers"]})
    print(C.table(table, list(table[0]), f"GPU check ({out['gpu']}; {args.steps} timed steps per row)"))
    suite = out["rows"]["suite, loader workers"]
    out["targets"] = {"data_wait_below": TARGET_WAIT, "step_vs_bare_below": TARGET_VS_BARE,
                      "data_wait_met": suite["data_wait"] < TARGET_WAIT,
                      "step_vs_bare_met": suite["vs_bare"] < TARGET_VS_BARE}
    out["seconds"] = time.perf_counter() - t_start
    print(f"targets: data wait < {100 * TARGET_WAIT:.0f}%: {'met' if out['targets']['data_wait_met'] else 'MISSED'}; "
          f"step within {100 * (TARGET_VS_BARE - 1):.0f}% of the bare loop: "
          f"{'met' if out['targets']['step_vs_bare_met'] else 'MISSED'}  (total {out['seconds']:.0f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
