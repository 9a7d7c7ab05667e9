"""DiNTS topologies as a resource-constrained space: what a topology costs, a decode that meets a
declared cost target, and a uniform sampler of feasible topologies (the random-search control).

Cost is MONAI's own estimate (``TopologySearch.get_ram_cost_usage``): every path contributes
``(1 + its cell's RAM cost, weighted by the op probabilities) x the size of its output feature
map``. :func:`path_costs` returns these terms one per (block, path), so that

    ``cost_ratio(code_a)`` = sum of the kept paths' terms / sum of all paths' terms

is the memory ratio MONAI's search term ``|target - usage / full usage|`` drives, evaluated at a
binary topology. For a decoded topology the ops are its decoded ops (one-hot), for the search
the softmax of ``log_alpha_c``: the ratio then says how much of the full topology's memory the
kept paths use with the same ops.

Why a constrained decode: ``TopologySearch.decode()`` is a shortest path over feasible block
transitions weighted by ``-log p(child)``; it does not look at the cost, so a search whose
probabilities have not reached the target (few epochs, small learning rate) decodes a topology
over it. :func:`decode_within` first asks MONAI's decode; when that is over the target it decodes
again with every path's log-odds lowered by ``lam x its share of the full cost``, which is
MONAI's shortest path with the Lagrangian cost ``-log p(child) + lam x cost(child)`` (a child's
probability is a product over its paths, so lowering a path's log-odds by ``lam c`` multiplies
every child that uses it by ``exp(-lam c)``; the per-block normaliser is the same for all
children of a block and so does not move the shortest path). The smallest ``lam`` that meets
the target is found by bisection: the cost of a Lagrangian optimum never rises with ``lam``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from benchmark.core.errors import UsageError

#: MONAI's paths per block at 3 depths: 0->0, 1->0, 0->1, 1->1, 2->1, 1->2, 2->2


def path_costs(space, in_size, code_c=None) -> np.ndarray:
    """(blocks, paths) memory terms of ``get_ram_cost_usage`` for every path at probability 1;
    ops weighted by ``softmax(log_alpha_c)``, or one-hot at ``code_c`` when given."""
    import torch
    import torch.nn.functional as F
    batch = in_size[0]
    image = np.array(in_size[-3:])
    sizes = np.array([batch * space.filter_nums[d] * (image // (2 ** d)).prod() for d in range(space.num_depths)],
                     dtype=float) / (2 ** int(space.use_downsample))
    if code_c is None:
        with torch.no_grad():
            ops = F.softmax(space.log_alpha_c, dim=-1).cpu().numpy().astype(float)
    else:
        ops = np.eye(space.num_cell_ops)[np.asarray(code_c, dtype=int)]
    cell = 1.0 + (space.ram_cost * ops).sum(-1)
    out_sizes = sizes[np.asarray(space.arch_code2out)]
    return cell * out_sizes[None, :] * 32 / 8 / 1024 ** 2


def cost_ratio(costs: np.ndarray, code_a) -> float:
    """Share of the full topology's cost that the kept paths (``code_a`` = 1) use."""
    return float((np.asarray(code_a, dtype=float) * costs).sum() / costs.sum())


def node_activation(space, code_a) -> np.ndarray:
    """(blocks + 1, depths) 0/1 active nodes of a path code, as ``decode()`` derives them."""
    code_a = np.asarray(code_a)
    node_a = np.zeros((space.num_blocks + 1, space.num_depths))
    for b in range(space.num_blocks):
        for p in range(code_a.shape[1]):
            node_a[b + 1, space.arch_code2out[p]] += code_a[b, p]
    for p in range(code_a.shape[1]):
        node_a[0, space.arch_code2in[p]] += code_a[0, p]
    return (node_a >= 1).astype(int)


def _decode(space, shift=None):
    """MONAI's decode, with ``log_alpha_a`` lowered by ``shift`` for the call (restored after)."""
    import torch
    if shift is None:
        return space.decode()
    saved = space.log_alpha_a.detach().clone()
    try:
        with torch.no_grad():
            space.log_alpha_a.sub_(torch.as_tensor(shift, dtype=saved.dtype, device=saved.device))
        return space.decode()
    finally:
        with torch.no_grad():
            space.log_alpha_a.copy_(saved)


def decode_within(space, target: float, in_size, rel_tol: float = 0.01) -> dict:
    """Decode the search space's topology at cost ratio <= ``target`` (see the module docstring).

    Returns node_a, arch_code_a, arch_code_c (int lists), the cost ratio, the multiplier ``lam``
    used (0: MONAI's decode met the target as it is) and the ratio of the unconstrained decode."""
    if not 0.0 < target <= 1.0:
        raise UsageError(f"DiNTS cost target must be in (0, 1], got {target}")
    node_a, code_a, code_c, _ = _decode(space)
    costs = path_costs(space, in_size, code_c)
    free = cost_ratio(costs, code_a)
    lam = 0.0
    if free > target:
        share = costs / costs.sum()
        hi = 1.0
        while True:
            node_a, code_a, _, _ = _decode(space, hi * share)
            if cost_ratio(costs, code_a) <= target:
                break
            if hi > 1e7:
                raise UsageError(f"DiNTS cost target {target} is below the cheapest feasible topology's ratio "
                                 f"{cost_ratio(costs, code_a):.3f}")
            hi *= 4.0
        lo = hi / 4.0 if hi > 1.0 else 0.0
        while hi - lo > rel_tol * hi:   # keep hi feasible, shrink the interval towards the smallest lam
            mid = (lo + hi) / 2
            if cost_ratio(costs, _decode(space, mid * share)[1]) <= target:
                hi = mid
            else:
                lo = mid
        lam = hi
        node_a, code_a, _, _ = _decode(space, lam * share)
    code_a = np.asarray(code_a).astype(int)
    return {"node_a": np.asarray(node_a).astype(int).tolist(), "arch_code_a": code_a.tolist(),
            "arch_code_c": np.asarray(code_c).astype(int).tolist(), "cost_ratio": cost_ratio(costs, code_a),
            "lam": float(lam), "unconstrained_cost_ratio": free}


# ---------------------------------------------------------------------------------------------
# the random-search control: feasible topologies drawn uniformly
# ---------------------------------------------------------------------------------------------
def child_transitions(space) -> np.ndarray:
    """(children, children) 0/1: which child (path pattern) of the next block may follow which,
    the feasibility ``decode()`` builds its graph from (the next block's input nodes are exactly
    this block's output nodes)."""
    children = space.child_list
    index = {str(c): i for i, c in enumerate(children)}
    out = np.zeros((len(children), len(children)), dtype=bool)
    for i, child in enumerate(children):
        node = np.zeros(space.num_depths, dtype=int)
        for p, used in enumerate(child):
            node[space.arch_code2out[p]] += used
        node = (node >= 1).astype(int)
        for mtx in space.transfer_mtx[str(node)]:
            out[i, index[str(mtx.flatten()[space.tidx].astype(int))]] = True
    return out


def sample_topology(space, trans: np.ndarray, rng: np.random.Generator,
                    paths_per_block: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """One feasible (path code, op code) drawn uniformly: every feasible chain of children equally
    likely (counted backwards, drawn forwards), every op uniform among the five.
    ``paths_per_block``: only children with that many active paths (the structure a decode gave,
    e.g. 1: a single chain of cells), uniform among the feasible chains of those."""
    nb, nc = space.num_blocks, len(space.child_list)
    if paths_per_block is not None:
        allowed = np.asarray(space.child_list).sum(axis=1) == paths_per_block
        if not allowed.any():
            raise UsageError(f"no DiNTS child has {paths_per_block} active paths")
        trans = trans & allowed[None, :] & allowed[:, None]
    else:
        allowed = np.ones(nc, dtype=bool)
    completions = np.tile(allowed.astype(float), (nb, 1))   # feasible ways to finish the chain from child c at block b
    for b in range(nb - 2, -1, -1):
        completions[b] = trans.astype(float) @ completions[b + 1]
        completions[b] /= completions[b].max()   # only ratios matter; keeps the numbers finite
    picks = [rng.choice(nc, p=completions[0] / completions[0].sum())]
    for b in range(1, nb):
        w = trans[picks[-1]] * completions[b]
        picks.append(rng.choice(nc, p=w / w.sum()))
    code_a = np.asarray(space.child_list)[picks].astype(int)
    code_c = rng.integers(0, space.num_cell_ops, size=code_a.shape)
    return code_a, code_c


def random_topologies(space, n: int, target: float, band: float, in_size, seed: int,
                      max_draws: int = 100_000, paths_per_block: Optional[int] = None) -> list[dict]:
    """``n`` uniform feasible topologies whose cost ratio lies in [target - band, target]
    (rejection sampling), each with its draw number and seed; ``paths_per_block`` as
    :func:`sample_topology`."""
    if n < 1 or band <= 0:
        raise UsageError("random DiNTS control: n must be >= 1 and the band > 0")
    rng = np.random.default_rng(seed)
    trans = child_transitions(space)
    out = []
    for draw in range(max_draws):
        code_a, code_c = sample_topology(space, trans, rng, paths_per_block)
        ratio = cost_ratio(path_costs(space, in_size, code_c), code_a)
        if target - band <= ratio <= target:
            out.append({"node_a": node_activation(space, code_a).tolist(), "arch_code_a": code_a.tolist(),
                        "arch_code_c": code_c.tolist(), "cost_ratio": ratio, "draw": draw})
            if len(out) == n:
                return out
    raise UsageError(f"random DiNTS control: only {len(out)} of {n} topologies in [{target - band:.2f}, {target:.2f}] "
                     f"after {max_draws} draws; widen the band")
