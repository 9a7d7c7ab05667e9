"""The random-search control of each architecture search (Li and Talwalkar 2019; Yu et al. 2020):
random architectures from the same space, at the same resource target, trained like the searched one.

    bench nas random dints  --n 5 --seed 0 [--target R] [--band 0.1]     # writes genotype files
    bench nas random bixnas --n 5 --seed 0 [--within FILE] [--target K] [--band 3]
    bench nas train-control dints --sample 0 --preset cpu [--seed 0] [key=value ...]
    bench nas train-control dints --sample searched --preset cpu          # the searched one, same tags

Spaces and targets:
  * ``dints``: feasible DiNTS topologies (6 blocks x 3 depths, all five ops), drawn uniformly
    (every feasible chain of path patterns equally likely, ops uniform; ``dints_space``) and
    kept when their memory ratio (MONAI's estimate, kept / all paths) lies in [target - band,
    target]; the target defaults to the searched genotype's declared ``ram_target``;
  * ``bixnas``: BiX-Net genotypes, every decision of the phase-two space (the inputs of the
    phase-one genotype, ``--within``; default the committed search's, read from its record in
    ``architectures/searches/<study>/study.json`` or its evolution record) drawn as a fair coin,
    kept when the bi-directional skips they keep lie in [target - band, target]; the target
    defaults to the searched genotype's skip count. A uniform draw over the full space keeps
    ~40 of 80 skips and never came near a searched genotype's dozen in 2,000 draws, so the
    control draws from the space phase two searched.
Rejection sampling from a uniform draw is uniform over the architectures that meet the target.

Each sample is a genotype file (``architectures/searches/random/<space>/sample-<k>.json``) with
its seed, draw number, cost and MACs at the preset; ``train-control`` trains one with the normal
run pipeline (``run_experiment``, the same preset, schedule and overrides as the searched
network's row) and tags the run ``nas.space``, ``nas.kind`` (searched | random) and
``nas.sample``, which the leaderboard's "search vs random" section reads
(``benchmark/results/leaderboard/search_control.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from benchmark.core.errors import UsageError

SPACES = ("dints", "bixnas")


def control_dir(space: str) -> Path:
    import architectures
    return Path(architectures.__file__).parent / "searches" / "random" / space


def _in_size(preset: str) -> tuple:
    from benchmark.run.config import build_config
    cfg = build_config(preset, [])
    return (cfg.train.batch_size, 1, *cfg.data.patch_zyx)


def sample_dints(n: int, seed: int, target: Optional[float] = None, band: Optional[float] = None, preset: str = "cpu",
                 out_dir: Optional[Path] = None, num_blocks: int = 6, num_depths: int = 3) -> list[Path]:
    """``n`` random DiNTS topologies at the cost target, written as genotype files.

    Default target: the searched topology's own cost and structure. The searched network meets
    its declared ``ram_target`` as a ceiling, and MONAI's decode can keep far less (the cpu search:
    one path per block, 6 of 42, cost ratio 0.014 under a target of 0.4: its path probabilities
    ended below one half, and the most probable child of a block is then the one with the fewest
    paths), so random networks drawn at the declared target would be twenty times larger and the
    control would compare sizes. So the default draws, uniformly, feasible topologies with as many
    paths per block as the searched one (when that is the same in every block) whose cost ratio
    is within [0.5, 1.5] x the searched one's. A genotype without ``cost_ratio`` falls back to its
    ``ram_target`` with a band of 0.1 below it, any number of paths."""
    import torch
    from monai.networks.nets import TopologySearch

    from architectures.dints import default_topology, save_topology
    from benchmark.campaigns.dints_search import RAM_TARGET
    from benchmark.campaigns.dints_space import random_topologies
    from benchmark.campaigns.search_cost import macs_at_preset
    paths_per_block = None
    if target is None:
        searched = default_topology()
        meta = searched.get("meta", {})
        if meta.get("cost_ratio"):
            target = 1.5 * float(meta["cost_ratio"])
            band = float(meta["cost_ratio"]) if band is None else band
            per_block = {int(sum(row)) for row in searched["arch_code_a"]}
            paths_per_block = per_block.pop() if len(per_block) == 1 else None
        else:
            target = float(meta.get("ram_target", RAM_TARGET))
    band = 0.1 if band is None else band
    torch.manual_seed(seed)   # the space's own (unused) parameters; the draws come from ``seed``
    space = TopologySearch(channel_mul=0.25, num_blocks=num_blocks, num_depths=num_depths, use_downsample=True,
                           spatial_dims=3)
    out_dir = Path(out_dir) if out_dir else control_dir("dints")
    paths = []
    for k, t in enumerate(random_topologies(space, n, target, band, _in_size(preset), seed,
                                            paths_per_block=paths_per_block)):
        genotype = {key: t[key] for key in ("node_a", "arch_code_a", "arch_code_c")}
        kept = int(np.asarray(t["arch_code_a"]).sum())
        meta = {"source": "bench nas random", "nas.space": "dints", "sample": k, "seed": seed, "draw": t["draw"],
                "ram_target": target, "band": band, "paths_per_block": paths_per_block,
                "cost_ratio": round(t["cost_ratio"], 4), "paths_kept": kept,
                "paths_total": int(np.asarray(t["arch_code_a"]).size), "preset": preset,
                "macs_per_patch": macs_at_preset(preset, "dints", topology=genotype)}
        paths.append(save_topology({**genotype, "meta": meta}, out_dir / f"sample-{k:02d}.json"))
    return paths


def phase_one_genotype(searched) -> "object":
    """The phase-one genotype behind a searched BiX-Net: from its study record (Optuna search)
    or its evolution record (evolutionary search)."""
    from architectures.bixnas import GENOTYPE_PATH, Genotype
    meta = searched.meta
    if isinstance(meta.get("phase1_genotype"), dict):
        return Genotype.from_dict(meta["phase1_genotype"])
    study = GENOTYPE_PATH.parent / "searches" / str(meta.get("study", "")) / "study.json"
    if meta.get("study") and study.exists():
        return Genotype.from_dict(json.loads(study.read_text())["user_attrs"]["phase1_genotype"])
    raise UsageError("no phase-one genotype recorded beside the searched bixnas genotype; give --within FILE")


class _Coin:
    """An Optuna-trial stand-in for ``sample_genotype``: every decision a fair coin."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return choices[int(self.rng.integers(len(choices)))]


def sample_bixnas(n: int, seed: int, within=None, target: Optional[int] = None, band: int = 3, preset: str = "cpu",
                  out_dir: Optional[Path] = None, max_draws: int = 100_000) -> list[Path]:
    """``n`` random BiX-Net genotypes of the phase-two space keeping [target - band, target] skips."""
    from architectures.bixnas import GENOTYPE_PATH, load_genotype, prune, sample_genotype, save_genotype
    from architectures._bixnas_supernet import skip_count
    from benchmark.campaigns.search_cost import macs_at_preset
    searched = load_genotype(GENOTYPE_PATH) if (within is None or target is None) else None
    within = load_genotype(within) if isinstance(within, (str, Path)) else (within or phase_one_genotype(searched))
    target = skip_count(searched) if target is None else int(target)
    if n < 1 or band < 0:
        raise UsageError("random bixnas control: n must be >= 1 and the band >= 0")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir) if out_dir else control_dir("bixnas")
    paths, seen = [], set()
    for draw in range(max_draws):
        g = prune(sample_genotype(_Coin(rng), within.iterations, within.levels, within=within))
        key = json.dumps(g.to_dict()["encoder"] + g.to_dict()["decoder"])
        if not target - band <= skip_count(g) <= target or key in seen:
            continue
        seen.add(key)
        k = len(paths)
        meta = {"source": "bench nas random", "nas.space": "bixnas", "sample": k, "seed": seed, "draw": draw,
                "skips_target": target, "band": band, "skips_kept": skip_count(g), "preset": preset,
                "macs_per_patch": macs_at_preset(preset, "bixnas", genotype=g.to_dict())}
        paths.append(save_genotype(g, out_dir / f"sample-{k:02d}.json", meta=meta))
        if len(paths) == n:
            return paths
    raise UsageError(f"random bixnas control: only {len(paths)} of {n} genotypes with {target - band}..{target} "
                     f"skips after {max_draws} draws; widen --band")


def control_genotype(space: str, sample: str, folder: Optional[Path] = None) -> tuple[dict, str]:
    """(model kwargs, genotype file name) of a control sample, or of the searched genotype."""
    if space not in SPACES:
        raise UsageError(f"unknown search space {space!r} (choose from {', '.join(SPACES)})")
    if sample == "searched":
        # the registered network's committed genotype, written into the run's config (as a random
        # sample's is), so its fingerprint changes with a new search and the run replays alone
        if space == "dints":
            from architectures.dints import GENOTYPE_PATH, load_topology
            d = load_topology(GENOTYPE_PATH)
            return {"topology": {k: d[k] for k in ("node_a", "arch_code_a", "arch_code_c")}}, GENOTYPE_PATH.name
        from architectures.bixnas import GENOTYPE_PATH, load_genotype
        g = load_genotype(GENOTYPE_PATH)
        return {"genotype": {k: v for k, v in g.to_dict().items() if k != "meta"}}, GENOTYPE_PATH.name
    if not sample.isdigit():
        raise UsageError(f"--sample must be a sample number or 'searched', got {sample!r}")
    path = (Path(folder) if folder else control_dir(space)) / f"sample-{int(sample):02d}.json"
    if space == "dints":
        from architectures.dints import load_topology
        d = load_topology(path)
        return {"topology": {k: d[k] for k in ("node_a", "arch_code_a", "arch_code_c")}}, path.name
    from architectures.bixnas import load_genotype
    g = load_genotype(path)
    return {"genotype": {k: v for k, v in g.to_dict().items() if k != "meta"}}, path.name


def control_config(space: str, sample: str, preset: str, seed: int, overrides: list[str],
                   folder: Optional[Path] = None):
    """(config, tags) of one control run: the space's registered network at the preset with the
    sample's genotype (or the searched one) in its kwargs, tagged for the search-vs-random section."""
    from benchmark.run.config import build_config
    kwargs, name = control_genotype(space, sample, folder)
    cfg = build_config(preset, [f"train.seed={seed}", *overrides], **{"model.arch": space})
    cfg.model.kwargs = {**cfg.model.kwargs, **kwargs}
    kind = "searched" if sample == "searched" else "random"
    cfg.name = f"{space}-{kind}-{sample}-s{seed}"
    return cfg, {"nas.space": space, "nas.kind": kind, "nas.sample": sample, "nas.genotype_file": name}


def train_control(space: str, sample: str, preset: str, seed: int, overrides: list[str],
                  folder: Optional[Path] = None, show_progress: bool = True):
    """Train and test one architecture of the control (or the searched one) through the normal
    run pipeline, tagged for the leaderboard's search-vs-random section."""
    from benchmark.run.train import run_experiment
    cfg, tags = control_config(space, sample, preset, seed, overrides, folder)
    return run_experiment(cfg, tags=tags, show_progress=show_progress)


def control_samples(space: str, folder: Optional[Path] = None) -> list[str]:
    """The random samples drawn for a space (``sample-<k>.json`` in its folder), as sample numbers."""
    d = Path(folder) if folder else control_dir(space)
    return [str(int(p.stem.split("-")[1])) for p in sorted(d.glob("sample-*.json"))]


def control_cells(space: str, preset: str, seeds: int, overrides: list[str], folder: Optional[Path] = None) -> list:
    """The whole control of one space as suite cells: the searched network and every random
    sample, each for ``seeds`` seeds (seed outermost, so a stopped campaign has every network at
    the lowest seeds), after the reference runs (threshold baseline, inter-reader agreement,
    phantom ceiling) every score on the page is read against. Restartable like ``bench suite``:
    finished cells are skipped by their config fingerprint, which holds the genotype."""
    from benchmark.campaigns.suite import Cell, reference_cells
    samples = control_samples(space, folder)
    if len(samples) < 1:
        raise UsageError(f"no random samples of {space} in {Path(folder) if folder else control_dir(space)}; "
                         f"draw them first: bench nas random {space} --n 5 --seed 0")
    if seeds < 1:
        raise UsageError("--seeds must be at least 1")
    cells = []
    for seed in range(seeds):
        for sample in ["searched", *samples]:
            cfg, tags = control_config(space, sample, preset, seed, overrides, folder)
            cells.append(Cell(space, cfg.loss.name, seed, cfg, tags=tags, title=cfg.name))
    return reference_cells(cells) + cells


def run_controls(space: str, preset: str, seeds: int, overrides: list[str], folder: Optional[Path] = None,
                 experiment: Optional[str] = None, show_progress: bool = True):
    """Train (or skip, or resume) every cell of a space's control; returns the suite result."""
    from benchmark.campaigns.suite import run_cells
    return run_cells(control_cells(space, preset, seeds, overrides, folder), f"control {space}",
                     experiment=experiment, show_progress=show_progress)
