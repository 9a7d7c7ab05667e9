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
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TARGET_WAIT = 0.10
TARGET_VS_BARE = 1.10


class UtilSampler:
    """Mean GPU utilisation (%) over a block, sampled in a background thread."""

    def __init__(self, device_index: Optional[int], every_s: float = 0.05):
        # device_index None (a CPU rehearsal): nothing to sample
        self.index, self.every = device_index, every_s
        self.samples: list[float] = []
        self.source = "unavailable"

    def _read(self):
        import torch
        if self.index is None:
            return None
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


def _device(device=None):
    import torch
    return torch.device("cuda", 0) if device is None else torch.device(device)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> Optional[float]:
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_suite(cfg, store, steps: int, warmup_epochs: int = 1, device=None) -> dict:
    """``Trainer.train_epoch`` as ``bench run`` calls it: step time, data wait, utilisation, peak
    memory (``device``: default the first GPU; a CPU device rehearses the code without GPU figures)."""
    from benchmark.run.train import DistInfo, Trainer
    device = _device(device)
    trainer = Trainer(cfg, store, device, DistInfo())
    for e in range(warmup_epochs):   # worker start-up, cuDNN autotuning, allocator warm-up
        trainer.train_epoch(e, show_progress=False)
    timed = TimedBatches(trainer.batches)
    trainer.batches = timed
    epochs = math.ceil(steps / len(timed))
    _sync(device)
    _reset_peak(device)
    with UtilSampler(device.index if device.type == "cuda" else None) as util:
        t0 = time.perf_counter()
        for e in range(warmup_epochs, warmup_epochs + epochs):
            trainer.train_epoch(e, show_progress=False)
        _sync(device)
        wall = time.perf_counter() - t0
    return {"steps": timed.steps, "step_ms": 1000 * wall / timed.steps, "data_wait": timed.wait_s / wall,
            "gpu_util_pct": util.mean, "util_source": util.source, "peak_mem_gb": _peak_gb(device),
            "loader_workers": timed.inner.num_workers, "on_device": timed.inner.on_device}


def measure_bare(cfg, store, steps: int, warmup: int = 10, device=None) -> dict:
    """The same model, loss, optimiser, AMP and memory format on batches already on the device."""
    import torch

    from benchmark.data.loader import TrainBatches, to_model_input
    from benchmark.run.train import build_loss, build_model, build_optimizer
    device = _device(device)
    cuda = device.type == "cuda"
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
    opt = build_optimizer(cfg, model.parameters(), fused=cuda)
    amp = cfg.train.amp and cuda        # as in Trainer: AMP only takes effect on CUDA
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step(k):
        x, y = batches[k % len(batches)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(x)
        loss = loss_fn([o.float() for o in out] if isinstance(out, (list, tuple)) else out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for k in range(warmup):
        step(k)
    _sync(device)
    _reset_peak(device)
    with UtilSampler(device.index if cuda else None) as util:
        t0 = time.perf_counter()
        for k in range(steps):
            step(k)
        _sync(device)
        wall = time.perf_counter() - t0
    return {"steps": steps, "step_ms": 1000 * wall / steps, "data_wait": 0.0, "gpu_util_pct": util.mean,
            "util_source": util.source, "peak_mem_gb": _peak_gb(device), "loader_workers": 0, "on_device": True}


#: the rows of one check, in the order they run
ROW_WORKERS, ROW_ON_DEVICE, ROW_BARE = "suite, loader workers", "suite, on_device", "bare loop, device-resident data"


def check_rows(cfg, store, steps: int, device=None, warmup_epochs: int = 1) -> dict:
    """The three rows of the check for one config (each with ``vs_bare``: its step over the bare loop's)."""
    import torch
    on_device = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_device": True})})
    rows = {}
    for name, fn in ((ROW_WORKERS, lambda: measure_suite(cfg, store, steps, warmup_epochs, device)),
                     (ROW_ON_DEVICE, lambda: measure_suite(on_device, store, steps, warmup_epochs, device)),
                     (ROW_BARE, lambda: measure_bare(cfg, store, steps, device=device))):
        print(f"  {cfg.model.arch}: {name} ...", file=sys.stderr, flush=True)
        rows[name] = fn()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for r in rows.values():
        r["vs_bare"] = r["step_ms"] / rows[ROW_BARE]["step_ms"]
    return rows


def rows_table(rows: dict, title: str) -> str:
    def fmt(v, pattern):
        return "-" if v is None or v != v else pattern.format(v)
    table = [{"row": name, "step ms": r["step_ms"], "data wait": f"{100 * r['data_wait']:.1f}%",
              "GPU util": fmt(r["gpu_util_pct"], "{:.0f}%"), "peak GB": fmt(r["peak_mem_gb"], "{:.3g}"),
              "vs bare": f"{r['vs_bare']:.3f}", "workers": r["loader_workers"]} for name, r in rows.items()]
    return C.table(table, list(table[0]), title)


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
        out["rows"] = check_rows(cfg, store, args.steps)
    print(rows_table(out["rows"], f"GPU check ({out['gpu']}; {args.steps} timed steps per row)"))
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
