"""Protocol v7's controls for recipe and tuning luck, planned from the finished studies.

* ``recipe_control.shared``: the best shared-space recipe of all studies (the optimiser, batch and
  regularisation parameters of ``search_space.common_space`` only, never an architecture's own
  knobs), chosen by the rescored validation value, trains every architecture at its default
  network (its own knobs at their defaults), ``final.seeds`` seeds: tags ``protocol.part=shared``,
  ``recipe.source=<the architecture whose study it came from>``.
* ``recipe_control.swap_top``: the top architectures by rescored validation value and the
  comparator each train with every other one's shared-space recipe (their own knobs as their
  study chose them, so the diagonal of the swap table is the final runs), ``swap_seeds`` seeds:
  tags ``protocol.part=swap``, ``recipe.source``.
* ``tuning.second_sampler``: the studies of the top three and the comparator run again with the
  sampler seed + ``seed`` (``<study>-s<seed>``), are rescored the same way and train
  ``final.seeds`` finals (``protocol.part=final``, ``optuna.study=<the -s study>``), with seeds
  ``SECOND_SAMPLER_SEED`` x offset + i: distinct runs even when both studies choose the same
  configuration (both start from the default recipe), so the leaderboard can resample studies,
  then seeds within them.

Every function here waits (returns None) until each first study it ranks has its chosen trial.
"""
from __future__ import annotations

from typing import Optional

from benchmark.campaigns.protocol.plan import StudyState, final_overrides, study_meta, tuned_cell
from benchmark.campaigns.protocol.spec import LoadedProtocol, TOP3_AND_COMPARATOR

#: the finals of a second-sampler study train seeds offset x this + 0, 1, ...
SECOND_SAMPLER_SEED = 100


def shared_keys(preset: str) -> set[str]:
    """The config fields of the shared space (``common_space``'s answers, every branch)."""
    from benchmark.campaigns.search_space import _ParameterProbe, common_space
    keys: set[str] = set()
    for branch in range(3):     # each optimiser's branch (the first categorical asked)
        keys |= set(common_space(_ParameterProbe([branch]), preset))
    return keys


def ranked(lp: LoadedProtocol, states: dict[str, StudyState]) -> Optional[list[StudyState]]:
    """The first studies by rescored validation value, best first; None while one listed in
    ``states`` has no chosen trial yet (a study with no complete trial is left out)."""
    if any(st.chosen is None and not (st.finished >= st.n_trials and st.best_trial is None)
           for st in states.values()):
        return None
    done = [st for st in states.values() if st.chosen is not None]
    return sorted(done, key=lambda st: (-st.value, st.arch))


def recipe_of(lp: LoadedProtocol, st: StudyState) -> list[str]:
    """The shared-space part of a study's chosen configuration, as overrides (the last
    assignment of each field wins, as it does when the config is built)."""
    from benchmark.campaigns.search_space import replay_overrides
    keys = shared_keys(lp.spec.preset)
    chosen: dict[str, str] = {}
    for item in replay_overrides(st.chosen, study_meta(lp, st.arch, st.offset)):
        key = item.split("=", 1)[0]
        if key in keys:
            chosen[key] = item
    return list(chosen.values())


def shared_cells(lp: LoadedProtocol, states: dict[str, StudyState]) -> Optional[list]:
    """Every architecture at its defaults with the best study's shared-space recipe."""
    rc = lp.spec.recipe_control
    if not rc or not rc.shared:
        return []
    order = ranked(lp, states)
    if order is None:
        return None
    if not order:
        return []
    source = order[0]
    recipe = recipe_of(lp, source)
    return [_recipe_cell(lp, arch, recipe, source.arch, seed, "shared")
            for seed in range(lp.spec.final.seeds) for arch in lp.spec.architectures if arch in states]


def swap_archs(lp: LoadedProtocol, states: dict[str, StudyState]) -> Optional[list[str]]:
    rc = lp.spec.recipe_control
    if not rc or rc.swap_top < 1:
        return []
    order = ranked(lp, states)
    if order is None:
        return None
    top = [st.arch for st in order[:rc.swap_top]]
    if lp.spec.reference_arch in states and states[lp.spec.reference_arch].chosen is not None:
        top.append(lp.spec.reference_arch)
    return list(dict.fromkeys(top))


def swap_cells(lp: LoadedProtocol, states: dict[str, StudyState]) -> Optional[list]:
    """Each swap architecture (its own knobs as chosen) with each other one's shared recipe."""
    from benchmark.campaigns.protocol.plan import trial_cell
    archs = swap_archs(lp, states)
    if archs is None:
        return None
    cells = []
    for seed in range(lp.spec.recipe_control.swap_seeds if lp.spec.recipe_control else 0):
        for arch in archs:
            for source in archs:
                if source == arch:
                    continue
                st = states[arch]
                c = trial_cell(lp, st, st.chosen, lp.spec.tuning.loss, seed, "swap",
                               extra=tuple(recipe_of(lp, states[source])))
                c.tags["recipe.source"] = source
                cells.append(c)
    return cells


def second_sampler_archs(lp: LoadedProtocol, states: dict[str, StudyState]) -> Optional[list[str]]:
    """The architectures whose study runs again (``tuning.second_sampler.archs``)."""
    ss = lp.spec.tuning.second_sampler
    if not ss:
        return []
    if isinstance(ss.archs, list):
        return [a for a in ss.archs if a in states]
    assert ss.archs == TOP3_AND_COMPARATOR
    order = ranked(lp, states)
    if order is None:
        return None
    return list(dict.fromkeys([st.arch for st in order[:3]] + [lp.spec.reference_arch]))


def second_final_cells(lp: LoadedProtocol, st: StudyState) -> list:
    """The finals of a second-sampler study (its chosen trial; see the module docstring)."""
    if st.chosen is None:
        return []
    return [tuned_cell(lp, st, lp.spec.tuning.loss, SECOND_SAMPLER_SEED * st.offset + i, "final")
            for i in range(lp.spec.final.seeds)]


def _recipe_cell(lp: LoadedProtocol, arch: str, recipe: list[str], source: str, seed: int, part: str):
    """``arch`` at its default settings (the default cell's config) with ``recipe`` on top."""
    from benchmark.run.config import build_config
    from benchmark.run.run_args import validate_names
    from benchmark.campaigns.suite import Cell
    cfg = build_config(lp.spec.preset, list(recipe) + final_overrides(lp, seed),
                       **{"model.arch": arch, "loss.name": lp.spec.tuning.loss})
    validate_names(cfg)
    tags = {**lp.tags, "protocol.part": part, "recipe.source": source, "tuned": "recipe"}
    return Cell(arch, cfg.loss.name, seed, cfg, tags=tags, artifacts=[(str(lp.path), "protocol")])
