"""``bench protocol status``: the lines of protocol v7's parts (rescoring choices, second-sampler
studies, shared-recipe and swap runs), read from the store and the journal."""
from __future__ import annotations

from typing import Optional

from benchmark.campaigns.protocol.controls import (second_final_cells, second_sampler_archs, shared_cells,
                                                   swap_cells)
from benchmark.campaigns.protocol.plan import StudyState, study_state
from benchmark.campaigns.protocol.rescore import choose, rescore_cells
from benchmark.campaigns.protocol.spec import LoadedProtocol


def control_lines(lp: LoadedProtocol, states: dict[str, StudyState], storage: Optional[str],
                  experiment: Optional[str]) -> list[str]:
    lines = []
    for st in states.values():
        lines += _rescore_lines(lp, st, experiment)
    archs = second_sampler_archs(lp, states)
    ss = lp.spec.tuning.second_sampler
    if ss and archs is None:
        lines.append("second sampler: waits for every study's chosen trial to pick its architectures")
    for arch in archs or []:
        st = study_state(lp, arch, storage, ss.seed)
        if st.finished >= st.n_trials:
            choose(lp, st, experiment)
        fin = _done(second_final_cells(lp, st), experiment)
        lines.append(f"second sampler {st.name}: {st.finished}/{st.n_trials} trials, finals {fin}")
        lines += _rescore_lines(lp, st, experiment)
    for part, cells in (("shared recipe", shared_cells(lp, states)), ("recipe swap", swap_cells(lp, states))):
        if cells is None:
            lines.append(f"{part}: waits for every study's chosen trial")
        elif cells:
            source = sorted({c.tags["recipe.source"] for c in cells})
            lines.append(f"{part}: {_done(cells, experiment)} runs done (recipes of {', '.join(source)})")
    return lines


def _rescore_lines(lp: LoadedProtocol, st: StudyState, experiment: Optional[str]) -> list[str]:
    if not lp.spec.tuning.rescore or st.best_trial is None:
        return []
    if not st.rescored:
        return [f"rescore {st.name}: {_done(rescore_cells(lp, st), experiment)} runs done"]
    means = ", ".join(f"t{n} {v:.4f}" for n, v in sorted(st.rescored.items(), key=lambda kv: -kv[1]))
    return [f"rescore {st.name}: chosen trial {st.chosen.number} (mean {st.rescored[st.chosen.number]:.4f}); "
            f"candidates {means}"]


def _done(cells: list, experiment: Optional[str]) -> str:
    from benchmark.campaigns.suite import run_cells
    if not cells:
        return "0/0"
    res = run_cells(cells, "", experiment, show_progress=False, dry_run=True)
    return f"{len(res.skipped)}/{len(cells)}"
