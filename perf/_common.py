"""Shared plumbing of the performance scripts in this folder (not a test module).

The machine these figures come from has two cores that other jobs use at the same time, so no
absolute time is trusted on its own: every script measures the thing and its baseline in the
same process, alternating A/B/A/B... repetitions (so a burst of outside load hits both sides
alike) and compares medians. Besides wall-clock time the scripts record the process's CPU time
(``time.process_time``): with one intra-op thread it counts only the cycles this process ran,
which makes it far less sensitive to being descheduled by a neighbour than wall time is.

Everything a script writes (crop caches, MLflow stores, checkpoints) goes to a private work
folder (default ``$TMPDIR/lidc-bench-perf``, ``--work-dir`` to move it) via ``LIDC_BENCH_HOME``
and ``LIDC_BENCH_CACHE``: a benchmark never touches the project's own ``runs/`` or ``.cache/``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

DEFAULT_WORK = Path(tempfile.gettempdir()) / "lidc-bench-perf"

# measure the checkout this script is in, not whichever copy of the package is installed
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parser(description: str, presets: Sequence[str] = ("cpu",)) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", choices=["smoke", "cpu", "paper"], action="append",
                   help=f"preset(s) to measure (repeatable; default: {', '.join(presets)})")
    p.add_argument("--reps", type=int, default=None, help="A/B repetitions per measurement")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                   help=f"private folder for caches and stores (default {DEFAULT_WORK})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: less interference on shared cores)")
    p.set_defaults(_default_presets=list(presets))
    return p


def setup(args) -> list[str]:
    """Point the suite at the private work folder, pin the thread count; returns the presets."""
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.environ["LIDC_BENCH_HOME"] = str(args.work_dir)
    os.environ["LIDC_BENCH_CACHE"] = str(args.work_dir / "crops")
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    import torch
    torch.set_num_threads(args.threads)
    return args.preset or args._default_presets


def threads() -> int:
    import torch
    return torch.get_num_threads()


def machine() -> str:
    import torch
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load avg {:.1f}".format(os.getloadavg()[0])
    return (f"{cpu}, {os.cpu_count()} cores{load}, {gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)")


class Timer:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def interleaved(cases: dict[str, Callable[[], float]], reps: int, warmup: int = 1,
                progress: Optional[str] = None) -> dict[str, dict[str, list[float]]]:
    """Run every case ``warmup + reps`` times, alternating the cases (and reversing their order
    every other round so neither always runs first). A case returns its unit count (patches,
    nodules...); the result holds per-repetition wall and CPU seconds per unit."""
    names = list(cases)
    out = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(warmup + reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            with Timer() as t:
                units = cases[n]()
            if r >= warmup:
                out[n]["wall"].append(t.wall / units)
                out[n]["cpu"].append(t.cpu / units)
        if progress:
            print(f"  [{progress}] round {r + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    return out


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    """Relative half-range of the middle repetitions, a rough noise gauge for the table."""
    if len(xs) < 2:
        return "-"
    s = sorted(xs)
    lo, hi = s[len(s) // 4], s[-1 - len(s) // 4]
    m = med(xs)
    return f"±{50 * (hi - lo) / m:.0f}%" if m else "-"


def table(rows: list[dict], columns: Sequence[str], title: str = "") -> str:
    """A plain Markdown table (pastes straight into docs/performance.md)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [("### " + title) if title else ""]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    return "\n".join(line for line in lines if line != "" or title)


#: the nodules every script uses unless it needs otherwise: one cache build per preset (about 40 s at
#: 1 mm on two busy cores), shared by the scripts through the work folder
SUBSET = {"train": 48, "val": 2, "test": 12}


def subset_store(preset: str, per_split: Optional[dict[str, int]] = None, overrides: Sequence[str] = (),
                 workers: int = 2):
    """(config, CropStore) for ``preset`` restricted to a deterministic, size-stratified subset of
    the phantom nodules (built into the private cache on first use)."""
    per_split = SUBSET if per_split is None else per_split
    from benchmark.run.config import build_config
    from benchmark.data import load_crops
    from benchmark.data.index import load_index
    from benchmark.data.split import load_split
    from benchmark.data.store import select_nodules
    cfg = build_config(preset, list(overrides))
    ids = select_nodules(load_index(), load_split(), dict(per_split))
    return cfg, load_crops(cfg.data, nodule_ids=ids, progress=False, workers=workers)
