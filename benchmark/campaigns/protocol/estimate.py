"""The planned cost of every part of a protocol, per architecture, from its declared
``seconds_per_epoch`` (``bench protocol status``'s part table; v7 parts included).

The figures are for the whole protocol, not what is left: they say whether it fits the
machine before anything runs. Tuning under successive halving is given twice: the upper
bound (every trial trains the full schedule) and the expected cost if each rung keeps
1/``reduction_factor`` of the trials that reach it (trial 0, the default recipe, is never
pruned). Optuna's pruner compares a trial with those that reached its rung before it, so the
first trials of a study are promoted more often than that: the expectation is on the low side
and the truth lies between the two.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from benchmark.campaigns.protocol.budget import samples_factor, trial_epochs
from benchmark.campaigns.protocol.spec import LoadedProtocol, final_epochs


def expected_trial_epochs(lp: LoadedProtocol) -> float:
    """Epochs an average trial trains under successive halving (1/factor kept at each rung at
    ``min_epochs`` x factor^k); the full length without that pruner."""
    t, full = lp.spec.tuning, trial_epochs(lp)
    if t.pruner != "successive_halving":
        return float(full)
    epochs, reached, rung = 0.0, 1.0, 0
    start = 0
    while start < full:
        stop = min(full, t.min_epochs * t.reduction_factor ** rung)
        epochs += reached * (stop - start)
        start, reached, rung = stop, reached / t.reduction_factor, rung + 1
    return epochs


@dataclass
class PartCosts:
    """Hours by part and architecture (``hours[part][arch]``), and the lines that explain them."""
    hours: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def put(self, part: str, arch: str, hours: Optional[float]) -> None:
        if hours is not None:
            self.hours.setdefault(part, {})[arch] = hours


def part_costs(lp: LoadedProtocol) -> PartCosts:
    """The whole protocol's planned hours (see the module docstring)."""
    s, t = lp.spec, lp.spec.tuning
    E, f = final_epochs(lp), samples_factor(lp)
    out = PartCosts()
    for arch in s.architectures:
        sec = s.seconds_per_epoch.get(arch)
        if sec is None:
            out.notes.append(f"no seconds_per_epoch for {arch}: not counted")
            continue
        h = sec * f / 3600
        full = t.n_trials * trial_epochs(lp)
        expected = trial_epochs(lp) + (t.n_trials - 1) * expected_trial_epochs(lp) \
            if t.first_trial == "default_recipe" else t.n_trials * expected_trial_epochs(lp)
        out.put("tuning (upper bound)", arch, full * h)
        out.put("tuning (expected)", arch, expected * h)
        if t.rescore:
            out.put("rescore", arch, t.rescore.top_k * t.rescore.seeds * E * h)
        out.put("final", arch, s.final.seeds * E * h)
        if s.defaults.seeds:
            out.put("default", arch, s.defaults.seeds * E * h)
        if s.recipe_control and s.recipe_control.shared:
            out.put("shared recipe", arch, s.final.seeds * E * h)
        if t.second_sampler:
            # if chosen: its study (expected), rescoring and finals again
            again = expected + (t.rescore.top_k * t.rescore.seeds if t.rescore else 0) + s.final.seeds * E
            out.put("second sampler (if chosen)", arch, again * h)
        if s.recipe_control and s.recipe_control.swap_top:
            k = s.recipe_control.swap_top + 1
            out.put("swap (if chosen)", arch, (k - 1) * s.recipe_control.swap_seeds * E * h)
        if s.loss_study:
            n_other = len([x for x in s.loss_study.losses if x != t.loss])
            out.put("loss study (if chosen)", arch, n_other * s.loss_study.seeds * E * h)
    return out


#: column headings of the part table
_SHORT = {"tuning (upper bound)": "tuning max", "tuning (expected)": "tuning exp", "shared recipe": "shared",
          "second sampler (if chosen)": "2nd sampler*", "swap (if chosen)": "swap*",
          "loss study (if chosen)": "loss study*"}

#: the parts every architecture runs (the others run for a few chosen ones)
ALWAYS = ("tuning (expected)", "rescore", "final", "default", "shared recipe")


def part_table(lp: LoadedProtocol) -> list[str]:
    """The status's lines: hours per part and architecture, the chosen parts' ranges, the totals."""
    s = lp.spec
    pc = part_costs(lp)
    parts = [p for p in pc.hours]
    lines = ["planned hours by part (declared s/epoch" + (f" x {samples_factor(lp):g} for the samples budget"
                                                         if s.budget else "") + "; whole protocol, done or not):"]
    short = {p: _SHORT.get(p, p) for p in parts}
    lines.append(f"{'architecture':14s} " + " ".join(f"{short[p][:12]:>12s}" for p in parts) + f" {'always':>8s}")
    for arch in s.architectures:
        row = [pc.hours[p].get(arch) for p in parts]
        always = sum(pc.hours[p].get(arch, 0.0) for p in ALWAYS if p in pc.hours)
        lines.append(f"{arch:14s} " + " ".join(f"{'?' if v is None else f'{v:.2f}':>12s}" for v in row)
                     + f" {always:>8.2f}")
    sums = {p: sum(v.values()) for p, v in pc.hours.items()}
    always = sum(sums.get(p, 0.0) for p in ALWAYS)
    lines.append(f"{'all':14s} " + " ".join(f"{sums[p]:>12.2f}" for p in parts) + f" {always:>8.2f}")
    lines.append("* runs only for the architectures chosen by the ranking (ranges below); "
                 "'always' = tuning (expected) + rescore + final + default + shared recipe")
    chosen_total_lo, chosen_total_hi = 0.0, 0.0
    for part, n in _chosen_counts(lp).items():
        lo, hi = _range(lp, part, pc.hours.get(part, {}), n)
        chosen_total_lo, chosen_total_hi = chosen_total_lo + lo, chosen_total_hi + hi
        lines.append(f"  {part}: {n} architectures, {lo:.1f} to {hi:.1f} h (comparator included where it must be)")
    upper = sums.get("tuning (upper bound)", 0.0) - sums.get("tuning (expected)", 0.0)
    lines.append(f"total: {always + chosen_total_lo:.1f} to {always + chosen_total_hi:.1f} h expected "
                 f"(tuning with the expected pruning); at most {always + chosen_total_hi + upper:.1f} h with no "
                 f"trial pruned" + (f" ({s.seconds_per_epoch_source})" if s.seconds_per_epoch_source else ""))
    return lines + pc.notes


def _chosen_counts(lp: LoadedProtocol) -> dict[str, int]:
    """How many architectures each chosen part runs on (the comparator counted among them)."""
    s, out = lp.spec, {}
    n = len(s.architectures)
    if s.tuning.second_sampler:
        ss = s.tuning.second_sampler.archs
        out["second sampler (if chosen)"] = min(n, 4) if isinstance(ss, str) else len(ss)
    if s.recipe_control and s.recipe_control.swap_top:
        out["swap (if chosen)"] = min(n, s.recipe_control.swap_top + 1)
    if s.loss_study:
        out["loss study (if chosen)"] = len(s.loss_study.archs)
    return out


def _range(lp: LoadedProtocol, part: str, hours: dict[str, float], n: int) -> tuple[float, float]:
    """The cheapest and dearest ``n`` architectures' sum, the comparator always among them
    (for the loss study: the named ones, and 'best' within ``best_max_hours``)."""
    from benchmark.campaigns.protocol.budget import loss_study_affordable
    ref = lp.spec.reference_arch
    fixed = [ref] if ref in hours else []
    pool = {a: h for a, h in hours.items() if a not in fixed}
    ls = lp.spec.loss_study
    if part.startswith("loss study") and ls:
        fixed = [a for a in ls.archs if a != "best" and a in hours]
        pool = {a: h for a, h in hours.items() if a not in fixed and loss_study_affordable(lp, a)}
    base = sum(hours[a] for a in fixed)
    ranked = sorted(pool.values())
    k = max(0, n - len(fixed))
    return base + sum(ranked[:k]), base + sum(ranked[-k:] if k else [])
