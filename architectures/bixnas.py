"""BiX-Net: a BiO-Net whose bi-directional skips are chosen by search (BiX-NAS), in 3D.

Paper: Wang, Xiang, Zhang, Song, Cai, "BiX-NAS: Searching Efficient Bi-directional
Architecture for Medical Image Segmentation", MICCAI 2021 (arXiv 2106.14033). Code lineage:
tiangexiang/BiX-NAS (Phase-2 / retraining model), built on BiO-Net (``bionet.py``).

The network is BiO-Net unrolled for T passes: 2T "stages" (encoder of pass 0, decoder of pass
0, encoder of pass 1, ...), each with one block per level. What feeds each block is the searched
part, written as a :class:`Genotype`: for stage (path, t) and level l, a list of inputs, where
0 is the block's sequential input and k >= 1 is the output of the opposite path at level k-1:
  * encoder, pass t: 0 = the encoder at level l-1 of the same pass, max-pooled (the stem at
    l = 0); k = the decoder at level k-1 of pass t-1. Pass 0's encoder is sequential only;
  * decoder, pass t: 0 = the decoder at level l+1 of the same pass (the bridge below the
    deepest level, fed by the deepest encoder); k = the encoder at level k-1 of pass t.
Levels are numbered 0 = finest in both paths (the original numbers its decoder list deepest
first, so its genes do not transfer verbatim). An empty list marks a pruned block.

Because every block has the same width, its inputs are fused by resizing them trilinearly to the
block's resolution and averaging them, not by concatenation; then two 3x3x3 convs. The convs of
a (path, level) are shared by all passes, each pass has its own norm (BiO-Net's rule).
:func:`prune` walks back from the output (the finest decoder of the last pass) and empties every
block the output does not depend on; a (path, level) dead in every pass gets no convolution, and
the bridge none if no pass reaches it.

What changed from the original, and for 3D:
  * Conv3d, instance norm by default (``norm="batch"`` for BatchNorm; why: ``bionet.py``,
    "Normalisation"), trilinear resizing; fused inputs averaged as one matrix product so the
    MACs count them (:func:`fuse`); widths 24 at every level and 16 at full resolution (the
    original: 48 and 32);
  * the stem is one full-resolution conv then a strided 3x3x3 conv (the original: three
    full-resolution convs then max-pool), and the post block one full-resolution conv before the
    1x1x1 head (the original: two): at 64x64x32 the full-resolution convs were most of the cost;
  * pooling per axis planned from the patch with nnU-Net's rule (``_layers.plan_strides``): the
    original's five 2x poolings would take z to 1 voxel at 64x64x32;
  * with ``norm="batch"``, BatchNorm momentum 0.1 in PyTorch semantics (the original passes
    0.99, a Keras carry-over under which the running statistics are the last batch's);
  * pruning is an exact backward walk over the data flow from the output; the original's
    search-time BFS assumes every block of the last decoder stage is alive;
  * the search: phase one is ``_bixnas_supernet.BiXSuperNet`` (BiX-NAS's differentiable selection
    over every skip, with a sparsity pressure, pruned progressively rather than by one argmax);
    phase two is either BiX-NAS's progressive evolutionary search, stage by stage from the last
    (``benchmark/campaigns/bixnas_evolve.py``), or NSGA-II over each phase-one skip as an Optuna
    boolean (``sample_genotype(within=...)``, ``benchmark/campaigns/nas.py``); the last decoder
    stage always keeps its sequential input (as in BiX-NAS).

``bixnas`` is built from ``architectures/bixnas_genotype.json``, written by
``bench search bixnas --choose`` with the search's MLflow runs and budget.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.core.errors import BenchError, UsageError
from benchmark.core.json_file import read_json

from . import register_architecture
from ._layers import PadToMultiple, plan_strides, total_stride
from .bionet import RecurrentConv, make_norm

__all__ = ["Genotype", "Choice", "BiXNet", "fuse", "search_space_choices", "search_stages", "sample_genotype",
           "prune", "alive_nodes", "load_genotype", "save_genotype", "GENOTYPE_PATH"]

GENOTYPE_PATH = Path(__file__).with_name("bixnas_genotype.json")
FORMAT = "lidc-bench/bixnas-genotype/1"
SEQ = 0
_PAPER_PATCH = (32, 64, 64)
PATHS = ("enc", "dec")


# --------------------------------------------------------------------------------------------
# Genotype
# --------------------------------------------------------------------------------------------

Stage = tuple[tuple[int, ...], ...]  # one tuple of inputs per level


@dataclass(frozen=True)
class Genotype:
    """Which outputs feed each block: ``encoder[t][level]`` / ``decoder[t][level]`` -> inputs.

    Inputs are sorted, unique ints in ``0..levels`` (0 = sequential input, k = opposite-path
    level k-1); ``()`` marks a pruned block. ``meta`` (study, run ids, ...) travels with the
    genotype through JSON but is ignored by equality and hashing.
    """

    iterations: int
    levels: int
    encoder: tuple[Stage, ...]
    decoder: tuple[Stage, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        # Canonical form (sorted, unique, tuples) so equal genotypes compare and hash equal
        # whatever order a JSON file or a sampler listed the inputs in.
        def canonical(stages):
            return tuple(tuple(tuple(sorted({int(k) for k in ins})) for ins in stage) for stage in stages)

        object.__setattr__(self, "encoder", canonical(self.encoder))
        object.__setattr__(self, "decoder", canonical(self.decoder))
        self._validate()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def full(cls, iterations: int = 3, levels: int = 4) -> "Genotype":
        """BiO-Net's full bi-directional pattern: every block takes every candidate."""
        every = tuple(range(levels + 1))
        enc = [tuple((SEQ,) if t == 0 else every for _ in range(levels)) for t in range(iterations)]
        dec = [tuple(every for _ in range(levels)) for _ in range(iterations)]
        return cls(iterations, levels, tuple(enc), tuple(dec))

    @classmethod
    def bio(cls, iterations: int = 3, levels: int = 4) -> "Genotype":
        """BiO-Net's own pattern in this space: each block takes its sequential input and the
        opposite path's output at its own level (averaged here, concatenated in BiO-Net)."""
        enc = [tuple((SEQ,) if t == 0 else (SEQ, l + 1) for l in range(levels)) for t in range(iterations)]
        dec = [tuple((SEQ, l + 1) for l in range(levels)) for _ in range(iterations)]
        return cls(iterations, levels, tuple(enc), tuple(dec))

    @classmethod
    def from_dict(cls, d: dict) -> "Genotype":
        return cls(int(d["iterations"]), int(d["levels"]), d["encoder"], d["decoder"], dict(d.get("meta", {})))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "iterations": self.iterations, "levels": self.levels,
                "encoder": [[list(ins) for ins in stage] for stage in self.encoder],
                "decoder": [[list(ins) for ins in stage] for stage in self.decoder],
                "meta": dict(self.meta)}

    def with_meta(self, **meta) -> "Genotype":
        return Genotype(self.iterations, self.levels, self.encoder, self.decoder, {**self.meta, **meta})

    def replace_stage(self, stage: int, inputs: Stage) -> "Genotype":
        path, t = stage_of(stage)
        stages = {"enc": list(self.encoder), "dec": list(self.decoder)}
        stages[path][t] = tuple(inputs)
        return Genotype(self.iterations, self.levels, tuple(stages["enc"]), tuple(stages["dec"]), dict(self.meta))

    # -- access ------------------------------------------------------------------------------
    def inputs(self, path: str, t: int, level: int) -> tuple[int, ...]:
        return (self.encoder if path == "enc" else self.decoder)[t][level]

    def blocks(self):
        """Every (path, t, level) in execution order."""
        for t in range(self.iterations):
            for path in PATHS:
                for level in (range(self.levels) if path == "enc" else reversed(range(self.levels))):
                    yield path, t, level

    def describe(self) -> str:
        """One line per block, e.g. ``dec t2 L0 <- seq, enc L1``."""
        lines = []
        for path, t, level in self.blocks():
            ins = self.inputs(path, t, level)
            other = "dec" if path == "enc" else "enc"
            src = ", ".join("seq" if k == SEQ else f"{other} L{k - 1}" for k in ins) or "(pruned)"
            lines.append(f"{path} t{t} L{level} <- {src}")
        return "\n".join(lines)

    # -- checks ------------------------------------------------------------------------------
    def _validate(self):
        T, L = self.iterations, self.levels
        if T < 1 or L < 1:
            raise UsageError(f"genotype: iterations and levels must be >= 1, got {T}, {L}")
        for name, stages in (("encoder", self.encoder), ("decoder", self.decoder)):
            if len(stages) != T or any(len(s) != L for s in stages):
                raise UsageError(f"genotype: {name} must be {T} stages x {L} levels")
            for t, stage in enumerate(stages):
                for level, ins in enumerate(stage):
                    if any(k < 0 or k > L for k in ins):
                        raise UsageError(f"genotype: {name}[{t}][{level}] = {list(ins)}; inputs must be in 0..{L}")
        for level, ins in enumerate(self.encoder[0]):
            if ins not in ((), (SEQ,)):
                raise UsageError(f"genotype: encoder[0][{level}] = {list(ins)}; the first pass has no decoder "
                                 "output to take, so its encoder is sequential only ([0])")
        if not self.decoder[T - 1][0]:
            raise UsageError("genotype: the output block decoder[-1][0] cannot be pruned")
        # A block may be pruned only if no live block reads it.
        for path, t, level in self.blocks():
            if not self.inputs(path, t, level):
                continue
            for node in _producers(self, path, t, level):
                if node[0] in PATHS and not self.inputs(*node):
                    raise UsageError(f"genotype: {path}[{t}][{level}] reads {node[0]}[{node[1]}][{node[2]}], "
                                     "which is pruned")


def stage_of(stage: int) -> tuple[str, int]:
    """Stage index -> (path, pass): 0 = enc t0, 1 = dec t0, 2 = enc t1, ..."""
    return PATHS[stage % 2], stage // 2


def _producers(g: Genotype, path: str, t: int, level: int) -> list[tuple]:
    """The nodes whose outputs a block reads: ("enc"|"dec", t, level), ("bridge", t) or ("stem",)."""
    out = []
    for k in g.inputs(path, t, level):
        if path == "enc":
            if k == SEQ:
                out.append(("stem",) if level == 0 else ("enc", t, level - 1))
            else:
                out.append(("dec", t - 1, k - 1))
        else:
            if k == SEQ:
                out.append(("bridge", t) if level == g.levels - 1 else ("dec", t, level + 1))
            else:
                out.append(("enc", t, k - 1))
    return out


def alive_nodes(g: Genotype) -> set[tuple]:
    """Nodes the output depends on: a backward walk over the data flow from decoder[-1][0]."""
    start = ("dec", g.iterations - 1, 0)
    alive, todo = {start}, [start]
    while todo:
        node = todo.pop()
        if node[0] == "bridge":
            parents = [("enc", node[1], g.levels - 1)]
        elif node[0] == "stem":
            parents = []
        else:
            parents = _producers(g, *node)
        for p in parents:
            if p not in alive:
                alive.add(p)
                todo.append(p)
    return alive


def prune(g: Genotype) -> Genotype:
    """The same genotype with every block the output does not depend on emptied (``()``)."""
    alive = alive_nodes(g)

    def keep(path, stages):
        return tuple(tuple(ins if (path, t, level) in alive else () for level, ins in enumerate(stage))
                     for t, stage in enumerate(stages))

    return Genotype(g.iterations, g.levels, keep("enc", g.encoder), keep("dec", g.decoder), dict(g.meta))


# --------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """One decision variable: does ``candidate`` feed block (path, iteration, level)?"""

    name: str          # Optuna parameter name, e.g. "arch.bix.dec2.l0.enc1"
    stage: int         # 0 = enc t0, 1 = dec t0, ...
    path: str
    iteration: int
    level: int
    candidate: int     # 0 = sequential, k = opposite-path level k-1
    description: str


def search_stages(iterations: int = 3) -> list[int]:
    """Searchable stages in BiX-NAS's order: the last stage first, back to stage 1 (stage 0 is fixed)."""
    return list(range(2 * iterations - 1, 0, -1))


def _choice_name(path: str, t: int, level: int, k: int) -> str:
    other = "dec" if path == "enc" else "enc"
    return f"arch.bix.{path}{t}.l{level}." + ("seq" if k == SEQ else f"{other}{k - 1}")


def search_space_choices(iterations: int = 3, levels: int = 4, within: Genotype | None = None) -> list[Choice]:
    """Every boolean decision of the space, in the order ``sample_genotype`` draws them.

    Fixed inputs are not decisions: pass 0's encoder is sequential only, and the last decoder
    stage always keeps its sequential input. A block whose draws are all False falls back to one
    input (see :func:`sample_genotype`). ``within`` (phase two of the search: the phase-one
    genotype) restricts each block to the inputs it has there; its pruned blocks have none.
    """
    if within is not None and (within.iterations, within.levels) != (iterations, levels):
        raise UsageError(f"search space: genotype is {within.iterations}x{within.levels}, asked {iterations}x{levels}")
    out = []
    for stage in search_stages(iterations):
        path, t = stage_of(stage)
        last_decoder = path == "dec" and t == iterations - 1
        for level in range(levels):
            allowed = range(levels + 1) if within is None else within.inputs(path, t, level)
            for k in allowed:
                if last_decoder and k == SEQ:
                    continue
                other = "dec" if path == "enc" else "enc"
                src = "sequential input" if k == SEQ else (
                    f"{other} level {k - 1} of pass {t - 1 if path == 'enc' else t}")
                out.append(Choice(_choice_name(path, t, level, k), stage, path, t, level, k,
                                  f"{path} pass {t} level {level} <- {src}"))
    return out


def sample_genotype(trial, iterations: int = 3, levels: int = 4, stages=None,
                    base: Genotype | None = None, within: Genotype | None = None) -> Genotype:
    """Draw a genotype from ``trial``: one ``suggest_categorical(name, [False, True])`` per Choice.

    ``stages`` (default: all, last first) restricts the draw to some stages; the other stages
    come from ``base`` (default: ``within``, else the full genotype). ``within`` restricts every
    block to its inputs in that genotype (phase two searches subsets of phase one's result).
    A block whose draws are all False keeps one input: its sequential input if allowed, else its
    lowest-numbered allowed input. The result is unpruned: :class:`BiXNet` prunes when built.
    """
    base = base or within or Genotype.full(iterations, levels)
    if (base.iterations, base.levels) != (iterations, levels):
        raise UsageError(f"sample_genotype: base genotype is {base.iterations}x{base.levels}, "
                         f"asked {iterations}x{levels}")
    stages = search_stages(iterations) if stages is None else list(stages)
    by_stage: dict[int, list[Choice]] = {s: [] for s in search_stages(iterations)}
    for c in search_space_choices(iterations, levels, within):
        by_stage[c.stage].append(c)
    g = base
    for stage in stages:
        if stage not in by_stage:
            raise UsageError(f"sample_genotype: stage {stage} has no decisions "
                             f"(searchable: {search_stages(iterations)})")
        path, t = stage_of(stage)
        last_decoder = path == "dec" and t == iterations - 1
        chosen = [set([SEQ]) if last_decoder else set() for _ in range(levels)]
        for c in by_stage[stage]:
            if trial.suggest_categorical(c.name, [False, True]):
                chosen[c.level].add(c.candidate)
        row = []
        for level, picked in enumerate(chosen):
            allowed = range(levels + 1) if within is None else within.inputs(path, t, level)
            if not allowed:
                row.append(())  # pruned in phase one
            elif picked:
                row.append(tuple(sorted(picked)))
            else:
                row.append((SEQ,) if SEQ in allowed else (min(allowed),))
        g = g.replace_stage(stage, tuple(row))
    return g


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def save_genotype(g: Genotype, path, meta: dict | None = None) -> Path:
    """Write ``g`` as JSON, one line per stage so a diff shows which skips changed."""
    path = Path(path)
    d = g.with_meta(**(meta or {})).to_dict()

    def stage_lines(stages):
        return "[\n" + ",\n".join("    " + json.dumps(s) for s in stages) + "\n  ]"

    text = ("{\n"
            f'  "format": {json.dumps(d["format"])},\n'
            f'  "iterations": {d["iterations"]},\n'
            f'  "levels": {d["levels"]},\n'
            '  "legend": "encoder[t][level] / decoder[t][level] = inputs of that block: 0 = sequential '
            'input, k = opposite-path level k-1 (encoder: decoder of pass t-1; decoder: encoder of pass t); '
            'level 0 = finest; [] = pruned",\n'
            f'  "encoder": {stage_lines(d["encoder"])},\n'
            f'  "decoder": {stage_lines(d["decoder"])},\n'
            f'  "meta": {json.dumps(d["meta"], indent=2, sort_keys=True, default=str).replace(chr(10), chr(10) + "  ")}\n'
            "}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_genotype(path) -> Genotype:
    """Read a genotype JSON written by :func:`save_genotype` (``meta`` included)."""
    path = Path(path)
    d = read_json(path, "genotype file")
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UsageError(f"genotype file {path}: expected \"format\": \"{FORMAT}\"")
    try:
        return Genotype.from_dict(d)
    except BenchError as e:  # failed validation: say which file
        raise UsageError(f"genotype file {path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"genotype file {path}: malformed ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------

def fuse(inputs, weights=None):
    """Weighted sum of same-shape tensors (default: their mean), written as one matrix product.

    Why a matrix product and not ``torch.stack(...).mean(0)``: ``benchmark/run/cost.py`` counts MACs
    with PyTorch's FlopCounterMode, which counts matrix products but no element-wise op. As a
    (1 x k) @ (k x N) product, fusing k inputs of N elements costs k * N MACs, so every fused
    input shows in a network's MACs (and a search that drops a skip sees it get cheaper).
    """
    stacked = torch.stack(list(inputs))
    if weights is None:
        weights = stacked.new_full((len(inputs),), 1.0 / len(inputs))
    return (weights.to(stacked.dtype)[None] @ stacked.flatten(1)).view(stacked.shape[1:])


class _FusedBlock(nn.Module):
    """Fuse the (resized) inputs (see :func:`fuse`), then two shared 3x3x3 convs with per-pass norms."""

    def __init__(self, width: int, passes, norm):
        super().__init__()
        self.conv1 = RecurrentConv(width, width, passes, norm)
        self.conv2 = RecurrentConv(width, width, passes, norm)

    def forward(self, inputs, size, t: int, weights=None):
        x = fuse([_resize(i, size) for i in inputs], weights)
        return self.conv2(self.conv1(x, t), t)


def _resize(x, size):
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


class BiXNet(nn.Module):
    def __init__(self, genotype: Genotype, in_channels: int = 1, out_channels: int = 1,
                 spatial_size=_PAPER_PATCH, width: int = 24, full_res_width: int = 16, norm: str = "instance",
                 bn_momentum: float = 0.1):
        super().__init__()
        self.genotype = prune(genotype)
        self.alive = alive_nodes(self.genotype)
        T, L = self.genotype.iterations, self.genotype.levels
        # stem downsampling, then one pooling after each encoder level (the last one feeds the bridge)
        self.strides = plan_strides(spatial_size, n_pools=L + 1)
        self.min_divisor = total_stride(self.strides)
        m = partial(make_norm, kind=norm, momentum=bn_momentum)
        m(1)  # an unknown norm fails here, with its one-line message
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, full_res_width, 3, padding=1, bias=False),
            m(full_res_width), nn.ReLU(inplace=True),
            nn.Conv3d(full_res_width, width, 3, stride=self.strides[0], padding=1, bias=False),
            m(width), nn.ReLU(inplace=True))
        self.pools = nn.ModuleList(nn.MaxPool3d(s, stride=s) for s in self.strides[1:])
        self.blocks = nn.ModuleDict()
        for path in PATHS:
            for level in range(L):
                passes = [t for t in range(T) if (path, t, level) in self.alive]
                if passes:  # a level dead in every pass gets no convolution at all
                    self.blocks[f"{path}{level}"] = _FusedBlock(width, passes, m)
        bridge_passes = [t for t in range(T) if ("bridge", t) in self.alive]
        self.bridge = (nn.ModuleList([RecurrentConv(width, width, bridge_passes, m),
                                      RecurrentConv(width, width, bridge_passes, m)])
                       if bridge_passes else None)
        self.post = nn.Sequential(nn.Conv3d(width, full_res_width, 3, padding=1, bias=False),
                                  m(full_res_width), nn.ReLU(inplace=True))
        self.head = nn.Conv3d(full_res_width, out_channels, 1)

    def forward(self, x):
        g, L = self.genotype, self.genotype.levels
        full_size = x.shape[2:]
        stem = self.stem(x)
        sizes = [tuple(stem.shape[2:])]
        for s in self.strides[1:]:
            sizes.append(tuple(n // k for n, k in zip(sizes[-1], s)))
        out = {("stem",): stem}
        for t in range(g.iterations):
            for path in PATHS:
                if path == "dec" and ("bridge", t) in self.alive:
                    h = self.pools[L - 1](out[("enc", t, L - 1)])
                    for conv in self.bridge:
                        h = conv(h, t)
                    out[("bridge", t)] = h
                for level in (range(L) if path == "enc" else reversed(range(L))):
                    if (path, t, level) not in self.alive:
                        continue
                    inputs = []
                    for node in _producers(g, path, t, level):
                        h = out[node]
                        if node[0] == "enc" and path == "enc":  # sequential encoder input: pool it
                            h = self.pools[level - 1](h)
                        inputs.append(h)
                    out[(path, t, level)] = self.blocks[f"{path}{level}"](
                        inputs, sizes[level], t, self.fusion_weights(path, t, level))
        h = _resize(out[("dec", g.iterations - 1, 0)], full_size)
        return self.head(self.post(h))

    def fusion_weights(self, path: str, t: int, level: int):
        """Weights of a block's inputs in the order of its genotype entry; None = their mean."""
        return None


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def _as_genotype(genotype) -> Genotype:
    if genotype is None:
        return load_genotype(GENOTYPE_PATH)
    if isinstance(genotype, Genotype):
        return genotype
    if isinstance(genotype, dict):
        return Genotype.from_dict(genotype)
    return load_genotype(genotype)


def _search_space(trial):
    # Hyper-parameters of the searched network; the skips themselves are searched by `bench search bixnas`.
    return {"width": trial.suggest_categorical("arch.width", [16, 24, 32])}


@register_architecture("bixnas", search_space=_search_space)
def bixnas(in_channels: int = 1, out_channels: int = 1, spatial_size=None, genotype=None, **kwargs):
    """BiX-Net built from ``genotype`` (a Genotype, dict or JSON path; default the committed file)."""
    net = BiXNet(_as_genotype(genotype), in_channels, out_channels, spatial_size or _PAPER_PATCH, **kwargs)
    return PadToMultiple(net, net.min_divisor)
