"""DiNTS with a fixed decoded topology, sized for nodule patches.

Paper: He et al., "DiNTS: Differentiable Neural Network Topology Search for 3D Medical Image
Segmentation", CVPR 2021 (arXiv 2103.15954). Library: ``monai.networks.nets`` ``DiNTS`` /
``TopologyInstance`` / ``TopologySearch`` of MONAI 1.6.1.

DiNTS searches a multi-resolution topology: ``num_blocks`` blocks, each holding cells between
``num_depths`` resolutions (same / one up / one down, 3*depths-2 paths), each cell one of five
3D ops (skip, 3x3x3, and the P3D 3x3x1, 3x1x3, 1x3x3); the search ends by decoding the
architecture parameters with a shortest-path over valid topologies (``TopologySearch.decode``).

Two registered networks:
  * ``dints``: the topology searched on this data by ``bench search dints``
    (``benchmark/campaigns/dints_search.py``, MONAI's TopologySearch) when ``architectures/dints_genotype.json``
    exists; until a real search has written it, the fixed topology below (so the default never
    silently becomes a smoke-searched one: only commit a genotype from a cpu or paper search);
  * ``dints_fixed``: always the fixed topology below, the parent the searched one is compared with.

What this file fixes, and why:
  * the fixed topology is NOT searched on LIDC: it is the decode of an untrained search space
    (``TopologySearch(num_blocks=6, num_depths=3)`` after ``torch.manual_seed(0)``), written
    below as constants so the network never depends on MONAI's random-number use. It is a valid
    DiNTS topology drawn without the search, the reference "searched-family" design that the
    suite's own BiX-NAS search is compared with; :func:`decode_seeded_topology` regenerates it;
  * size: 6 blocks and 3 depths (MONAI's defaults; the bundle recipes use 12 blocks, 4 depths
    at 96^3) and channel_mul 0.5, widths 16/32/64 at 1/2, 1/4, 1/8: about 2.9 M parameters and
    4.8 GMAC per 64x64x32 patch, where channel_mul 1.0 with 12x4 gives ~80 M. Three depths keep
    the coarsest map at 4x8x8 (z, y, x) for the paper patch instead of 2x4x4;
  * inputs are zero-padded to a multiple of 16 (2^(num_depths+1), as MONAI recommends for its
    stem) and the output cropped back, so the smoke and odd patches work.
Instance norm and ReLU as in MONAI; single logit out (``num_classes=out_channels``), no deep
supervision. Bundle recipe: SGD lr 0.025, Dice+CE, AMP.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from monai.networks.nets import DiNTS, TopologyInstance

from benchmark.core.errors import UsageError
from benchmark.core.json_file import read_json

from . import register_architecture
from ._layers import PadToMultiple

__all__ = ["FIXED_TOPOLOGY", "GENOTYPE_PATH", "build_topology", "decode_seeded_topology", "dints_model", "load_topology",
           "save_topology", "default_topology", "paths_kept", "describe_topology"]

GENOTYPE_PATH = Path(__file__).with_name("dints_genotype.json")
FORMAT = "lidc-bench/dints-topology/1"

#: ``TopologySearch(channel_mul=0.25, num_blocks=6, num_depths=3, use_downsample=True).decode()``
#: after ``torch.manual_seed(0)`` (MONAI 1.6.1). node_a: (num_blocks + 1) x num_depths active
#: feature nodes; arch_code_a: num_blocks x paths, 1 = path used; arch_code_c: op index per path
#: (0 skip, 1 3x3x3, 2 3x3x1, 3 3x1x3, 4 1x3x3). Paths per block as input depth -> output depth,
#: in MONAI's order for 3 depths (``arch_code2in`` / ``arch_code2out``):
#: 0->0, 1->0, 0->1, 1->1, 2->1, 1->2, 2->2.
FIXED_TOPOLOGY = {
    "seed": 0,
    "node_a": [[1, 0, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]],
    "arch_code_a": [[1, 0, 1, 0, 1, 0, 1],
                    [0, 1, 1, 0, 0, 0, 1],
                    [0, 1, 1, 1, 1, 1, 1],
                    [1, 1, 1, 1, 1, 0, 1],
                    [1, 0, 0, 1, 0, 0, 1],
                    [0, 1, 1, 0, 1, 0, 0]],
    "arch_code_c": [[1, 2, 3, 2, 2, 3, 0],
                    [0, 0, 3, 4, 4, 4, 1],
                    [4, 2, 0, 0, 0, 3, 1],
                    [0, 2, 4, 3, 0, 0, 1],
                    [3, 0, 1, 4, 2, 2, 3],
                    [1, 1, 1, 3, 3, 0, 4]],
}


#: what MONAI's topology constructor prints (to stdout, with a timestamp, on every build; it is a
#: print, not a warning, so warnings.filterwarnings cannot reach it)
_PATCH_ADVICE = "Length of input patch is recommended to be a multiple of"


def build_topology(cls, **kwargs):
    """``cls(**kwargs)`` for MONAI's TopologyInstance / TopologySearch without its patch-size advice:
    these networks pad every input to a multiple of 16 themselves (``PadToMultiple``), so the
    advice is always met and only cluttered `bench archs` and every run's output. Anything else
    the constructor prints still reaches stdout."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        space = cls(**kwargs)
    rest = [line for line in captured.getvalue().splitlines() if _PATCH_ADVICE not in line]
    if rest:
        print("\n".join(rest), file=sys.stdout)
    return space


def decode_seeded_topology(seed: int = 0, num_blocks: int = 6, num_depths: int = 3) -> dict:
    """Decode an untrained DiNTS search space after seeding torch: how FIXED_TOPOLOGY was made."""
    import torch
    from monai.networks.nets import TopologySearch

    torch.manual_seed(seed)
    # channel_mul only sizes the throw-away supernet; the decoded codes do not depend on it.
    space = build_topology(TopologySearch, channel_mul=0.25, num_blocks=num_blocks, num_depths=num_depths,
                           use_downsample=True, spatial_dims=3)
    node_a, arch_code_a, arch_code_c, _ = space.decode()
    return {"seed": seed, "node_a": np.asarray(node_a).astype(int).tolist(),
            "arch_code_a": np.asarray(arch_code_a).astype(int).tolist(),
            "arch_code_c": np.asarray(arch_code_c).astype(int).tolist()}


def save_topology(topology: dict, path) -> Path:
    """Write a decoded topology (node_a, arch_code_a, arch_code_c, meta) as JSON, a row per line."""
    path = Path(path)
    rows = lambda m: "[\n" + ",\n".join("    " + json.dumps(r) for r in m) + "\n  ]"  # noqa: E731
    meta = json.dumps(topology.get("meta", {}), indent=2, sort_keys=True).replace("\n", "\n  ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{\n" f'  "format": "{FORMAT}",\n'
                    '  "legend": "node_a: (blocks+1) x depths active nodes; arch_code_a: blocks x paths (1 = used; '
                    'paths 0->0, 1->0, 0->1, 1->1, 2->1, 1->2, 2->2 for 3 depths); arch_code_c: op per path (0 skip, '
                    '1 3x3x3, 2 3x3x1, 3 3x1x3, 4 1x3x3)",\n'
                    f'  "node_a": {rows(topology["node_a"])},\n  "arch_code_a": {rows(topology["arch_code_a"])},\n'
                    f'  "arch_code_c": {rows(topology["arch_code_c"])},\n  "meta": {meta}\n}}\n')
    return path


def load_topology(path) -> dict:
    path = Path(path)
    d = read_json(path, "DiNTS topology file")
    if not isinstance(d, dict) or d.get("format") != FORMAT or not all(k in d for k in ("node_a", "arch_code_a",
                                                                                         "arch_code_c")):
        raise UsageError(f"DiNTS topology file {path}: expected \"format\": \"{FORMAT}\" with node_a, "
                         "arch_code_a and arch_code_c")
    return d


def default_topology() -> dict:
    """The searched topology if one was committed, else FIXED_TOPOLOGY."""
    return load_topology(GENOTYPE_PATH) if GENOTYPE_PATH.exists() else FIXED_TOPOLOGY


def dints_model(in_channels: int = 1, out_channels: int = 1, channel_mul: float = 0.5,
                topology: dict | None = None) -> DiNTS:
    """The bare MONAI DiNTS for a decoded topology (default: FIXED_TOPOLOGY)."""
    topo = topology or FIXED_TOPOLOGY
    node_a = np.asarray(topo["node_a"])
    arch_code_a = np.asarray(topo["arch_code_a"], dtype=float)
    arch_code_c = np.asarray(topo["arch_code_c"], dtype=int)
    num_blocks, num_depths = arch_code_a.shape[0], node_a.shape[1]
    if node_a.shape != (num_blocks + 1, num_depths) or arch_code_c.shape != arch_code_a.shape \
            or arch_code_a.shape[1] != 3 * num_depths - 2:
        raise UsageError(f"dints: inconsistent topology shapes node_a {node_a.shape}, arch_code_a "
                         f"{arch_code_a.shape}, arch_code_c {arch_code_c.shape}")
    space = build_topology(TopologyInstance, arch_code=[arch_code_a, arch_code_c], channel_mul=channel_mul,
                           num_blocks=num_blocks, num_depths=num_depths, use_downsample=True, spatial_dims=3)
    return DiNTS(dints_space=space, in_channels=in_channels, num_classes=out_channels,
                 use_downsample=True, node_a=node_a)


def _search_space(trial):
    return {"channel_mul": trial.suggest_categorical("arch.channel_mul", [0.25, 0.5, 1.0])}


def _as_topology(topology):
    if topology is None:
        return default_topology()
    return topology if isinstance(topology, dict) else load_topology(topology)


@register_architecture("dints", search_space=_search_space)
def dints(in_channels: int = 1, out_channels: int = 1, spatial_size=None, topology=None, **kwargs):
    """MONAI DiNTS, 6 blocks x 3 depths, channel_mul 0.5; ``topology``: a dict or JSON path
    (default: the committed search result, else FIXED_TOPOLOGY)."""
    net = dints_model(in_channels, out_channels, topology=_as_topology(topology), **kwargs)
    return PadToMultiple(net, 2 ** (net.num_depths + 1))


@register_architecture("dints_fixed", search_space=_search_space)
def dints_fixed(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """MONAI DiNTS with FIXED_TOPOLOGY: the parent of the searched ``dints``."""
    net = dints_model(in_channels, out_channels, topology=FIXED_TOPOLOGY, **kwargs)
    return PadToMultiple(net, 2 ** (net.num_depths + 1))


def paths_kept(topology: dict) -> tuple[int, int]:
    """(paths the topology keeps, paths of its space): 42 of 42 is MONAI's full default topology."""
    code_a = np.asarray(topology["arch_code_a"])
    return int(code_a.sum()), int(code_a.size)


def describe_topology(topology: dict) -> str:
    """What a topology's row is: a searched topology, or the default (every path) with only the
    cell operations searched; named so a table never calls a cell-op search a topology search."""
    kept, total = paths_kept(topology)
    source = topology.get("meta", {}).get("source")
    if source == "bench nas random":
        return f"random topology ({kept} of {total} paths) drawn at the search's cost target, random cell operations"
    searched = source == "bench search dints"
    if kept == total:
        return (f"default topology (all {total} paths), cell operations searched" if searched
                else f"default topology (all {total} paths), not searched")
    return (f"topology searched ({kept} of {total} paths kept) and cell operations searched" if searched
            else f"fixed topology ({kept} of {total} paths), not searched on this data")
