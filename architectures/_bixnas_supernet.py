"""The search side of BiX-Net (``bixnas.py``): BiX-NAS's phase-one super-network and the
accounting of what a genotype keeps.

Phase one (:class:`BiXSuperNet`) is BiX-NAS's differentiable selection of each block's inputs,
per pass (every (path, pass, level) block has its own logits), trained jointly with the weights
on the training loss. :meth:`BiXSuperNet.sparsity` is the sparsity pressure a phase-one run
adds to the loss (``benchmark/campaigns/bixnas_phase1.py``): the expected number of distinct
inputs the columns pick, so inputs that do not help the loss lose their probability.

Skips are the bi-directional inputs (candidate k >= 1: the opposite path's output), the thing
BiX-NAS prunes; the sequential input (k = 0) is the plain U-Net path. :func:`skip_count` and
:func:`describe_search` count them in live blocks only (a pruned block's skips cost nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.core.errors import UsageError

from .bixnas import SEQ, BiXNet, Genotype, alive_nodes, prune

__all__ = ["BiXSuperNet", "skip_count", "describe_search", "removable_inputs"]


def skip_count(g: Genotype) -> int:
    """Bi-directional skips (inputs k >= 1) of the blocks the output depends on."""
    g = prune(g)
    return sum(1 for path, t, level in g.blocks() for k in g.inputs(path, t, level) if k != SEQ)


def describe_search(g: Genotype) -> str:
    """``"31 of 80 bi-directional skips kept, 17 of 24 blocks alive"``: what a genotype kept of the full space."""
    full = Genotype.full(g.iterations, g.levels)
    alive = sum(1 for node in alive_nodes(prune(g)) if node[0] in ("enc", "dec"))
    return (f"{skip_count(g)} of {skip_count(full)} bi-directional skips kept, "
            f"{alive} of {2 * g.iterations * g.levels} blocks alive")


def removable_inputs(g: Genotype, stage_path: str, t: int) -> list[tuple[str, int, int, int]]:
    """(path, t, level, input) a search may drop from a live block of one stage: every input but
    the last decoder stage's sequential one (BiX-NAS always keeps it)."""
    g = prune(g)
    last_decoder = stage_path == "dec" and t == g.iterations - 1
    return [(stage_path, t, level, k) for level in range(g.levels) for k in g.inputs(stage_path, t, level)
            if not (last_decoder and k == SEQ)]


class BiXSuperNet(BiXNet):
    """BiX-NAS phase one: a BiX-Net holding every bi-directional skip, each block choosing its
    inputs with learnable selection logits, pruned progressively down to ``keep`` inputs per block.

    As in BiX-NAS's phase one, each block with a choice holds a (candidates x ``columns``) logit
    matrix ``alpha``; each column draws one candidate with a straight-through Gumbel-softmax
    (temperature ``tau``) in training, its argmax in evaluation; the block fuses its inputs
    weighted by how many columns picked them (the original weighs the distinct picks equally;
    counting keeps the weights differentiable in one product). The logits train jointly with the
    weights on the training loss (single-level, as in the original). Blocks without a choice
    (pass 0's encoder) and the last decoder stage's sequential input, which BiX-NAS always keeps,
    are fixed: that input counts as one extra pick.

    Pruning is progressive, not the original's one-shot per-column argmax: each
    :meth:`prune_step` removes, from every block that still has more than ``keep`` inputs, the one
    with the least mean selection probability (masked, so it is never drawn again). After enough
    steps :meth:`genotype` is the phase-one result: at most ``keep`` inputs per block, dead blocks
    pruned. Phase two (``benchmark/campaigns/nas.py``) searches subsets of it.
    """

    def __init__(self, iterations: int = 3, levels: int = 4, columns: int = 3, keep: int = 3, tau: float = 1.0,
                 **kwargs):
        super().__init__(Genotype.full(iterations, levels), **kwargs)
        if columns < 1 or keep < 1:
            raise UsageError(f"bixnas super-network: columns and keep must be >= 1, got {columns}, {keep}")
        self.columns, self.keep, self.tau = columns, keep, tau
        self.alphas = nn.ParameterDict()
        for path, t, level in self.genotype.blocks():
            ins = self.genotype.inputs(path, t, level)
            if len(ins) > 1:
                key = self._key(path, t, level)
                # small random logits: ties between candidates are broken differently per seed
                self.alphas[key] = nn.Parameter(1e-3 * torch.randn(len(ins), columns))
                self.register_buffer(f"mask_{key}", torch.ones(len(ins), dtype=torch.bool))

    @staticmethod
    def _key(path: str, t: int, level: int) -> str:
        return f"{path}{t}_l{level}"

    def _fixed_seq(self, path: str, t: int) -> bool:
        return path == "dec" and t == self.genotype.iterations - 1

    def arch_parameters(self):
        return list(self.alphas.values())

    def weight_parameters(self):
        arch = {id(p) for p in self.alphas.values()}
        return [p for p in self.parameters() if id(p) not in arch]

    def fusion_weights(self, path: str, t: int, level: int):
        key = self._key(path, t, level)
        if key not in self.alphas:
            return None
        mask = getattr(self, f"mask_{key}")
        logits = self.alphas[key].masked_fill(~mask[:, None], float("-inf"))
        if self.training:
            picks = F.gumbel_softmax(logits.t(), tau=self.tau, hard=True, dim=-1)  # columns x candidates
        else:
            picks = F.one_hot(logits.argmax(0), logits.shape[0]).to(logits.dtype)
        counts = picks.sum(0)
        if self._fixed_seq(path, t):
            counts = counts + F.one_hot(torch.tensor(SEQ), counts.shape[0]).to(counts.dtype)
        return counts / counts.sum()

    def probabilities(self) -> dict[tuple, dict[int, float]]:
        """{(path, t, level): {candidate: mean selection probability}} over unpruned candidates."""
        out = {}
        for path, t, level in self.genotype.blocks():
            key = self._key(path, t, level)
            if key not in self.alphas:
                continue
            mask = getattr(self, f"mask_{key}")
            p = self.alphas[key].detach().masked_fill(~mask[:, None], float("-inf")).softmax(0).mean(1)
            ins = self.genotype.inputs(path, t, level)
            out[(path, t, level)] = {k: float(p[i]) for i, k in enumerate(ins) if mask[i]}
        return out

    def prune_step(self) -> int:
        """Mask the least probable input of every block above ``keep`` inputs; returns how many."""
        removed = 0
        for (path, t, level), probs in self.probabilities().items():
            if len(probs) <= self.keep:
                continue
            droppable = {k: p for k, p in probs.items() if not (k == SEQ and self._fixed_seq(path, t))}
            worst = min(droppable, key=droppable.get)
            mask = getattr(self, f"mask_{self._key(path, t, level)}")
            mask[self.genotype.inputs(path, t, level).index(worst)] = False
            removed += 1
        return removed

    def sparsity(self):
        """Expected number of distinct inputs picked per choosing block (0 outside training): for
        input k, 1 - prod over columns of (1 - p(column picks k)), summed over k, mean over blocks.
        Added to the loss with a weight, it is phase one's sparsity pressure."""
        if not self.training or not len(self.alphas):
            return torch.zeros(())
        per_block = []
        for key, alpha in self.alphas.items():
            mask = getattr(self, f"mask_{key}")
            p = alpha.masked_fill(~mask[:, None], float("-inf")).softmax(0)   # candidates x columns
            per_block.append((1 - (1 - p).prod(1)).sum())
        return torch.stack(per_block).mean()

    def pruned(self) -> bool:
        return all(len(p) <= self.keep for p in self.probabilities().values())

    def genotype_now(self) -> Genotype:
        """The unmasked inputs of every block, dead blocks pruned (phase one's result when :meth:`pruned`)."""
        g = self.genotype
        stages = {"enc": [], "dec": []}
        for path, stage_list in (("enc", g.encoder), ("dec", g.decoder)):
            for t, stage in enumerate(stage_list):
                row = []
                for level, ins in enumerate(stage):
                    key = self._key(path, t, level)
                    if key in self.alphas:
                        mask = getattr(self, f"mask_{key}")
                        ins = tuple(k for i, k in enumerate(ins) if mask[i])
                    row.append(ins)
                stages[path].append(tuple(row))
        return prune(Genotype(g.iterations, g.levels, tuple(stages["enc"]), tuple(stages["dec"])))
