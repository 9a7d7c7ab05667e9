"""``bench archs``: the registry as a table, each architecture sized as the named preset builds it.

Sizes are those of a ``bench run --preset P`` model: the architecture's ``preset_kwargs`` for
that preset applied (the cpu unet3d is narrower than the paper's), cost counted at the preset's
patch. Latency is timed only with ``--latency`` (it dominates the command's time). Only the
table goes to stdout; anything a library prints while models are built goes to stderr.

Building every model (and importing MONAI, timm and smp to do it) takes half a minute on two
cores, so parameter and MAC counts are cached in ``<home>/.cache/archs/<preset>.json``, keyed by
the architecture, its preset kwargs and patch, the bytes of every ``architectures/*.py``, of the
searched genotypes beside them and of ``benchmark/run/cost.py``, and the versions of the libraries
that build models: any change to what a count depends on measures it again. Latency is never
cached (it depends on the machine's load).
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import sys
from pathlib import Path

from benchmark.run.run_args import alias_note

#: libraries whose version changes what a model builds to
_MODEL_LIBRARIES = ("torch", "monai", "timm", "segmentation-models-pytorch-3d")


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    from importlib import metadata

    import architectures
    h = hashlib.sha256()
    folder = Path(architectures.__file__).parent   # the code and the searched genotypes (*.json)
    sources = sorted(folder.glob("*.py")) + sorted(folder.glob("*.json")) + [Path(__file__).with_name("cost.py")]
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for dist in _MODEL_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{dist}=={metadata.version(dist)}".encode())
    return h.hexdigest()


def _size_key(name: str, preset: str, kwargs: dict, patch_zyx) -> str:
    ident = json.dumps([name, preset, kwargs, list(patch_zyx)], sort_keys=True, default=str)
    return hashlib.sha256((ident + _code_digest()).encode()).hexdigest()[:20]


def sizes_cache_path(preset: str) -> Path:
    from benchmark.core.paths import home
    return home() / ".cache" / "archs" / f"{preset}.json"


def _load_sizes(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        print(f"note: ignoring unreadable size cache {path} (sizes are measured again)", file=sys.stderr)
        return {}


def _save_sizes(path: Path, sizes: dict) -> None:
    # only after measuring, when torch is imported anyway (the checkpoint module imports it);
    # atomic: a concurrent `bench archs` reads the old table or the new one
    from benchmark.core.checkpoint import atomic_write_bytes
    text = json.dumps(sizes, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def search_note(name: str) -> str:
    """What a searched architecture's committed genotype is, named for what was searched (a DiNTS
    genotype that keeps every path had only its cell operations searched); '' for the others."""
    if name in ("dints", "dints_fixed"):
        from architectures.dints import FIXED_TOPOLOGY, default_topology, describe_topology
        return f"; {describe_topology(default_topology() if name == 'dints' else FIXED_TOPOLOGY)}"
    if name == "bixnas":
        from architectures.bixnas import GENOTYPE_PATH, load_genotype
        from architectures._bixnas_supernet import describe_search
        return f"; {describe_search(load_genotype(GENOTYPE_PATH))}" if GENOTYPE_PATH.exists() else ""
    return ""


def registry_rows(preset: str = "cpu", measure: bool = True, pattern: str = "*", latency: bool = False,
                  latency_repeats: int = 3, use_cache: bool = True):
    """One dict per architecture (name, aliases, family, paper; with ``measure`` also params_M
    and GMACs, and cpu_ms with ``latency``) and the preset's base config."""
    from architectures import ARCHITECTURES
    from benchmark.run.config import build_config
    base = build_config(preset)
    cache_path = sizes_cache_path(preset)
    sizes = _load_sizes(cache_path) if measure and use_cache else {}
    changed = False
    shape = (1, 1, *base.data.patch_zyx)
    aliases: dict[str, list[str]] = {}
    for alias, target in ARCHITECTURES.aliases().items():
        aliases.setdefault(target, []).append(alias)
    rows = []
    for name in ARCHITECTURES.names():
        if not fnmatch.fnmatch(name, pattern):
            continue
        e = ARCHITECTURES.entry(name)
        family = e.family + (" (experimental)" if e.meta.get("experimental") else "")
        row = {"name": name, "aliases": ",".join(sorted(aliases.get(name, []))), "family": family,
               "paper": e.paper + search_note(name)}
        if measure:
            cfg = build_config(preset, **{"model.arch": name})  # the run's own model kwargs
            key = _size_key(name, preset, cfg.model.kwargs, cfg.data.patch_zyx)
            if key in sizes and not latency:
                row.update(sizes[key])
            else:
                row.update(_measure(name, cfg, shape, latency, latency_repeats))
                sizes[key] = {"params_M": row["params_M"], "GMACs": row["GMACs"]}
                changed = True
        rows.append(row)
    if changed and use_cache:
        _save_sizes(cache_path, sizes)
    return base, rows


def _measure(name: str, cfg, shape, latency: bool, latency_repeats: int) -> dict:
    import torch

    from architectures import create_architecture
    from benchmark.run.cost import count_macs, count_parameters, measure_latency
    torch.manual_seed(0)
    out = {}
    with contextlib.redirect_stdout(sys.stderr):
        model = create_architecture(name, in_channels=1, out_channels=1, spatial_size=cfg.data.patch_zyx,
                                    **cfg.model.kwargs).eval()
        out["params_M"] = count_parameters(model) / 1e6
        out["GMACs"] = count_macs(model, shape) / 1e9
        if latency:
            out["cpu_ms"] = measure_latency(model, shape, repeats=latency_repeats, warmup=1,
                                            device="cpu")["median_ms"]
    return out


def format_table(rows: list[dict]) -> list[str]:
    cols = [("name", "name", "<", None), ("aliases", "aliases", "<", None), ("family", "family", "<", None),
            ("params_M", "params(M)", ">", "{:.3f}"), ("GMACs", "GMACs", ">", "{:.3f}"),
            ("cpu_ms", "CPU ms", ">", "{:.1f}"), ("paper", "paper", "<", None)]
    cols = [c for c in cols if any(c[0] in r for r in rows) or c[0] in ("name", "aliases", "family", "paper")]
    cells = [[(fmt.format(r[k]) if fmt else str(r[k])) if k in r else "" for k, _, _, fmt in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _, _) in enumerate(cols)]

    def line(values):
        parts = [f"{v:{a}{w}}" for v, (_, _, a, _), w in zip(values, cols, widths)]
        return "  ".join(parts).rstrip()
    return [line([h for _, h, _, _ in cols])] + [line(c) for c in cells]


def print_table(args):
    preset = args.preset or "cpu"
    cfg, rows = registry_rows(preset, measure=not args.no_cost, pattern=args.filter, latency=args.latency)
    if not args.no_cost:
        z, y, x = cfg.data.patch_zyx
        threads = ""
        if args.latency:
            import torch
            threads = f", CPU latency ({torch.get_num_threads()} threads)"
        print(f"parameters and MACs{threads} of each architecture as preset {preset} builds it, per {x}x{y}x{z} "
              f"patch, batch 1 (counts cached in {sizes_cache_path(preset)})", file=sys.stderr)
    for line in format_table(rows):
        print(line)
    for row in rows:
        for alias in filter(None, row["aliases"].split(",")):
            print(alias_note(alias).replace("note: --arch ", "--arch ", 1), file=sys.stderr)
