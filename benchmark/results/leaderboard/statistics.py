"""A leaderboard's rows and numbers: from ``RunRecord``s to ``Leaderboard`` tables (no I/O).

Rows. Inside a table, a row is one (architecture, loss) pair; its runs are its seeds. Two runs
of the same configuration and seed (re-runs) count once: the most recent one is used. Runs of
one (architecture, loss) whose configurations differ in more than the seed become separate rows,
labelled by what differs.

Sections (``RunRecord.section``, ``build_sections``). With a protocol's final runs (tag
``protocol.part=final``) in the group, they make the main table ("Tuned protocol") and every
other model run goes to a second one ("Default settings", with each row's gain from tuning);
without, the default table is the main one. A protocol's loss study (``protocol.part=loss``, plus
the final runs of the same architectures) is the last section. Reference rows appear in the main
table. Protocol v7 adds a "Shared recipe" table (``protocol.part=shared``: every architecture with
one recipe, ranked as the tuned table is) and the recipe-swap matrix (``recipes``); its
validation-only parts (``rescore``, ``tuning``) never reach the page. The final runs of a second
tuning study of one architecture (another ``optuna.study``, another configuration) pool with the
first study's into one tuned row, whose bootstrap resamples the studies too (a third level).

Statistics per row (``benchmark.results.resampling``; metric m: every leaderboard column of
``benchmark.run.metrics.METRIC_SPECS`` (Dice, NSD, HD95) and, when every run has it, Dice vs truth):
  * mean ± std over seeds of each seed's mean over test nodules;
  * a 95% percentile interval from a two-level bootstrap: nodules resampled with one draw shared
    by every row of every section (paired), seeds resampled within each row;
  * median HD95 and any other metric whose specification asks for it (mean over seeds of each
    seed's median), the count of empty predictions over
    all seeds x nodules, Dice by nodule size bin, parameters, MACs per patch and training time
    (means over seeds), the median latency (the fastest seed's); the latter two depend on the
    machine named in the notes.

Ranking (models only). ``aggregate`` (default): rank by mean Dice. ``rank``: rank the models
on every test nodule by its Dice, average those ranks per model, rank the averages
(rank-then-aggregate, Maier-Hein et al. 2018). Both orders' summary numbers are shown. Each
row (models and references) is compared with the top-ranked model by a two-sided paired
Wilcoxon signed-rank test over the test nodules (per-nodule Dice averaged over seeds); the
p-values of one table form one Holm-corrected family. Each model is also compared with the
pre-declared reference architecture (``unet3d``), a second family. P(best) is the share of
two-level bootstrap resamples in which the model comes first under the chosen ranking.

Reference rows (``inter_reader``: each radiologist against the STAPLE of the other three;
``readers_vs_truth``: the same run's radiologists against the phantom's true shape;
``phantom_ceiling``: the true shape itself; ``threshold_baseline``: the non-learned baseline)
are shown below the models, marked, and not ranked; they are deterministic, so only their
latest run is used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from benchmark.core.errors import UsageError
from benchmark.run.metrics import leaderboard_columns, metric_spec, truth_columns
from benchmark.results.leaderboard.collect import (REFERENCE_ARCHS, RunRecord, TableKey, declared_comparator,
                                                   split_readers_vs_truth)
from benchmark.results.leaderboard.recipes import pooled_study_finals

RANKINGS = ("aggregate", "rank")


def dataset_strata_of(config: dict):
    """The strata (size bins and their column keys, texture classes) of the dataset a run's
    logged config names: its adapter's (``benchmark.data.datasets``); LIDC's when the dataset is
    not registered in this process (a table read from an export of another lab's dataset)."""
    from benchmark.data.datasets import DEFAULT_DATASET, dataset_of_config, get_dataset
    try:
        return get_dataset(dataset_of_config(config)).strata
    except UsageError:
        return get_dataset(DEFAULT_DATASET).strata


@dataclass
class Row:
    label: str
    arch: str
    loss: str
    reference: Optional[str]
    runs: list[RunRecord]
    stats: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[str]:
        return [r.seed for r in self.runs]

    @property
    def studies(self) -> list[str]:
        """The tuning study behind each run (its ``optuna.study`` tag; "" without)."""
        return [r.tags.get("optuna.study", "") for r in self.runs]

    def tag(self, name: str) -> str:
        """The tag's value when every run of the row agrees on it, else ''."""
        vals = {r.tags.get(name, "") for r in self.runs}
        return vals.pop() if len(vals) == 1 else ""


@dataclass
class Leaderboard:
    key: TableKey
    rows: list[Row]                # models in rank order, then references
    table: pd.DataFrame            # the CSV: one line per row, numbers unformatted
    per_nodule: pd.DataFrame       # row label x nodule id: Dice averaged over seeds
    size_counts: dict              # size-bin label -> test nodules in it
    ranking: str
    n_boot: int
    boot_seed: int
    experiment: str = ""
    n_source_runs: int = 0
    devices: list = field(default_factory=list)
    n_unscored: int = 0            # test nodules without ground truth at this spacing
    section: str = "default"       # tuned | default | loss (see RunRecord.section)
    metrics: tuple = ()            # per-nodule columns: the leaderboard's, then the vs-truth ones every run has
    boots: dict = field(default_factory=dict)   # row label -> metric -> two-level bootstrap means
    reference_arch: str = ""       # the pre-declared comparator's row label, when it has a row
    comparator: str = ""           # the architecture the runs' protocol declares as comparator ("" if none)
    size_keys: dict = field(default_factory=dict)   # size-bin label -> column key, the dataset's order
    #: the tables below the main one (default settings when the main one is tuned; the loss study)
    sections: list = field(default_factory=list)
    #: searched networks against their parents, on this table's rows (``search_comparisons``)
    comparisons: list = field(default_factory=list)
    #: searched networks against random ones of their space (``search_control.search_controls``)
    search_controls: list = field(default_factory=list)
    #: architectures trained with each other's recipes (``recipes.swap_matrix``; None without swap runs)
    swap: object = None
    #: protocol -> (Spearman rho, n) of tuning score against the finals' validation Dice (``diagnostics``)
    tuning_signal: dict = field(default_factory=dict)
    #: whether the runs come from a protocol with the v7 parts and tags (``diagnostics.is_extended``):
    #: the page's v7 columns and sections show only then
    extended: bool = False


def _protocol_config(run: RunRecord) -> dict:
    """The run's config as it bears on the result: without its name, and without the early
    stopping patience when early stopping never fired (it then made no difference, so such a
    run is the same experiment as one with any larger patience; see RunConfig.budget_fingerprint)."""
    from benchmark.run.config import flatten, ran_full_budget, without_unset_additions
    flat = flatten(without_unset_additions(run.config)) if run.config else {}
    flat.pop("name", None)
    if ran_full_budget(run.tags.get("stopped_early"), run.metrics.get("epochs_completed"), flat.get("train.epochs")):
        flat.pop("train.early_stopping_patience", None)
    return {k: json.dumps(v, sort_keys=True) for k, v in flat.items()}


def _config_without_seed(run: RunRecord) -> dict:
    flat = _protocol_config(run)
    flat.pop("train.seed", None)
    return flat


def _declared_patience(run: RunRecord):
    """The early-stopping patience the run was configured with (None: not recorded or off)."""
    return (run.config.get("train") or {}).get("early_stopping_patience") if run.config else None


def _joined_patience(flats: dict[str, dict], declared: dict[str, object]) -> dict[str, dict]:
    """The runs' configs (run id -> ``_config_without_seed``) with each run that early stopping
    left alone placed beside the runs it did stop. A run stopped early keeps its patience in its
    config; one that ran its full budget with patience P had it dropped, and is the same
    experiment as a run with any patience >= P (``RunConfig.budget_fingerprint``). So such a run
    takes the smallest patience >= P among the stopped runs of its otherwise equal config, and the
    seeds of one declared config stay one row whether or not early stopping fired in each of them
    (a loss-study cell whose seed 1 collapsed and stopped at epoch 21 of 30 had become two rows)."""
    key = "train.early_stopping_patience"
    rest = {rid: json.dumps({k: v for k, v in flat.items() if k != key}, sort_keys=True)
            for rid, flat in flats.items()}
    stopped: dict[str, list[str]] = {}        # otherwise equal config -> its stopped runs' patiences
    for rid, flat in flats.items():
        if key in flat:
            stopped.setdefault(rest[rid], []).append(flat[key])
    out = dict(flats)
    for rid, flat in flats.items():
        p = declared.get(rid)
        if key in flat or p is None:
            continue
        larger = [q for q in stopped.get(rest[rid], []) if _as_number(json.loads(q)) >= _as_number(p)]
        if larger:
            out[rid] = {**flat, key: min(larger, key=lambda q: _as_number(json.loads(q)))}
    return out


def _as_number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("inf")


def make_rows(runs: list[RunRecord]) -> list[Row]:
    """(arch, loss[, config variant]) rows; re-runs of one configuration and seed count once."""
    latest: dict[tuple, RunRecord] = {}
    for r in runs:
        # a reference is deterministic: its latest run stands for it
        ident = (r.arch, r.loss) if r.reference else \
            (r.arch, r.loss, json.dumps(_protocol_config(r), sort_keys=True) if r.config else r.run_id)
        if ident not in latest or (r.end_time, r.run_id) > (latest[ident].end_time, latest[ident].run_id):
            latest[ident] = r
    by_pair: dict[tuple[str, str], list[RunRecord]] = {}
    for r in latest.values():
        by_pair.setdefault((r.arch, r.loss), []).append(r)
    rows = []
    for (arch, loss), group in sorted(by_pair.items()):
        reference = REFERENCE_ARCHS.get(arch)
        flats = _joined_patience({r.run_id: _config_without_seed(r) for r in group},
                                 {r.run_id: _declared_patience(r) for r in group})
        variants: dict[str, list[RunRecord]] = {}
        for r in group:
            variants.setdefault(json.dumps(flats[r.run_id], sort_keys=True), []).append(r)
        pooled = pooled_study_finals(list(variants.values()))
        if pooled:
            variants = {"": pooled}
        differing = sorted({k for f in flats.values() for k in f
                            if len({fl.get(k) for fl in flats.values()}) > 1}) if len(variants) > 1 else []
        for members in variants.values():
            members.sort(key=lambda r: (r.tags.get("optuna.study", "") if pooled else "", _seed_sort(r.seed),
                                        r.run_id))
            label = arch if reference or loss in ("", "none") else f"{arch} / {loss}"
            if differing:
                f = flats[members[0].run_id]
                label += " [" + ", ".join(f"{k}={json.loads(f[k]) if k in f else '-'}" for k in differing) + "]"
            rows.append(Row(label, arch, loss, reference, members))
    rows.sort(key=lambda r: r.label)
    return rows


def _seed_sort(seed: str):
    try:
        return (0, int(seed), "")
    except ValueError:
        return (1, 0, seed)


def _rank_desc(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(-np.asarray(values, dtype=float), method="min")


def _row_statistics(row: Row, row_mats: dict, res, key: str, metrics, medians, empty: Optional[np.ndarray],
                    size_keys: dict, size_of: list[str]) -> dict[str, np.ndarray]:
    """Fill ``row.stats`` (means, spreads, intervals, medians, empty predictions, size bins, costs)
    from its (seeds x nodules) matrices; return its bootstrap draws per metric."""
    from benchmark.results import resampling as stats
    s, boots = row.stats, {}
    for m in metrics:
        per_seed = row_mats[m].mean(axis=1)           # each seed's mean over nodules
        boots[m] = stats.two_level_bootstrap(row_mats[m], res, key)
        s[f"{m}_mean"] = float(per_seed.mean())
        s[f"{m}_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
        s[f"{m}_ci_low"], s[f"{m}_ci_high"] = stats.percentile_interval(boots[m])
    for m in medians:
        s[f"{m}_median"] = stats.seed_median(row_mats[m])
    s["n_empty"], s["n_predictions"] = stats.empty_count(empty) if empty is not None else \
        (float("nan"), float("nan"))
    dice_nod = row_mats["dice"].mean(axis=0)
    for b, col in size_keys.items():
        sel = np.array([x == b for x in size_of])
        s[f"dice_size_{col}"] = float(dice_nod[sel].mean()) if sel.any() else float("nan")
    for k in ("params", "macs_per_patch", "latency_ms_median", "train_seconds"):
        vals = [r.metrics[k] for r in row.runs if k in r.metrics]
        # latency: the fastest seed's. The seeds time one network, and other work on the cores
        # only ever slows a pass (a bixnas run timed 425 ms beside its seeds' 16 and 17 ms)
        pick = np.min if k == "latency_ms_median" else np.mean
        s[k] = float(pick(vals)) if vals else float("nan")
    s["train_seconds_total"] = float(sum(r.metrics.get("train_seconds", 0.0) for r in row.runs))
    return boots


def _rank_and_test(models: list[Row], refs: list[Row], rows: list[Row], per_nodule_dice: dict, mats: dict,
                   boots: dict, res, ranking: str, section: str, comparator: str) -> tuple[list[Row], str]:
    """Rank the models (with P(best)), test every row against #1 and every model against the
    declared comparator; return the models in rank order and the comparator's row label ("")."""
    from benchmark.results import resampling as stats
    if not models:
        return models, ""
    n = len(next(iter(per_nodule_dice.values())))
    dice = np.stack([per_nodule_dice[r.label] for r in models])   # models x nodules
    nodule_ranks = np.stack([_rank_desc(dice[:, j]) for j in range(n)], axis=1)
    mean_rank = nodule_ranks.mean(axis=1)
    agg = np.array([r.stats["dice_mean"] for r in models])
    if ranking == "aggregate":
        final = _rank_desc(agg)
        pb = stats.p_best(np.stack([boots[r.label]["dice"] for r in models]))
    else:
        final = _rank_desc(-mean_rank)
        pb = stats.rank_p_best([mats[r.label]["dice"] for r in models],
                               [f"{section}:{r.label}" for r in models], res)
    for i, r in enumerate(models):
        r.stats.update(rank=int(final[i]), mean_nodule_rank=float(mean_rank[i]), p_best=float(pb[i]))
    order = sorted(range(len(models)), key=lambda i: (final[i], -agg[i], models[i].label))
    models = [models[i] for i in order]
    # against the top-ranked model: every other row, one Holm family
    # (readers_vs_truth has no Dice against the STAPLE, so no test of it)
    tested = [r.label for r in models + refs if not np.isnan(per_nodule_dice[r.label]).all()]
    for label, (p, q) in stats.pvalues_against(per_nodule_dice, models[0].label, tested).items():
        next(r for r in rows if r.label == label).stats.update(wilcoxon_p=p, wilcoxon_p_holm=q)
    # against the pre-declared reference architecture: the other models, one Holm family
    ref_row = next((r for r in models if comparator and r.arch == comparator), None)
    if ref_row is None:
        return models, ""
    for label, (p, q) in stats.pvalues_against(per_nodule_dice, ref_row.label, [r.label for r in models]).items():
        next(r for r in rows if r.label == label).stats.update(p_vs_reference=p, p_vs_reference_holm=q)
    return models, ref_row.label


def _csv_record(r: Row, section: str, n: int, metrics, medians, size_keys: dict) -> dict:
    """One row of the page's CSV, its columns in their published order."""
    s = r.stats
    rec = {"section": section, "rank": s.get("rank", ""), "row": r.label, "arch": r.arch, "loss": r.loss,
           "reference": r.reference or "", "n_seeds": len(r.runs), "seeds": ";".join(r.seeds),
           "n_nodules": n}
    for m in metrics:
        for suffix in ("mean", "std", "ci_low", "ci_high"):
            rec[f"{m}_{suffix}"] = s[f"{m}_{suffix}"]
    for m in medians:
        rec[f"{m}_median"] = s[f"{m}_median"]
    rec["n_empty"], rec["n_predictions"] = s["n_empty"], s["n_predictions"]
    for col in size_keys.values():
        rec[f"dice_size_{col}"] = s[f"dice_size_{col}"]
    for k in ("params", "macs_per_patch", "latency_ms_median", "train_seconds"):
        rec[k] = s[k]
    rec["mean_nodule_rank"] = s.get("mean_nodule_rank", float("nan"))
    rec["p_best"] = s.get("p_best", float("nan"))
    rec["wilcoxon_p"] = s.get("wilcoxon_p", float("nan"))
    rec["wilcoxon_p_holm"] = s.get("wilcoxon_p_holm", float("nan"))
    rec["p_vs_reference_holm"] = s.get("p_vs_reference_holm", float("nan"))
    rec["study"] = r.tag("optuna.study")
    rec["tuning_budget"] = r.tag("tuning.budget")
    rec["protocol"] = f"{r.tag('protocol.name')} v{r.tag('protocol.version')}" if r.tag("protocol.name") else ""
    rec["run_ids"] = ";".join(x.run_id for x in r.runs)
    return rec


def build_leaderboard(key: TableKey, runs: list[RunRecord], ranking: str = "aggregate", n_boot: int = 2000,
                      boot_seed: int = 0, section: str = "default") -> Leaderboard:
    """One table: rows, their two-level bootstrap statistics (``benchmark.results.resampling``), ranks and tests."""
    from benchmark.results import resampling as stats
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r} (choose from {', '.join(RANKINGS)})")
    runs = split_readers_vs_truth(runs)
    rows = make_rows(runs)
    if not rows:
        raise UsageError(f"table {key.name}: no run for its {section} section")
    nodules = sorted(rows[0].runs[0].per_nodule["nodule_id"].astype(str))
    n = len(nodules)
    # a score against the truth is shown when every model has it; a reference row without one (the
    # ceiling is the true shape itself; inter_reader's moved to readers_vs_truth) leaves it empty
    models_runs = [r for r in runs if not r.reference]
    metrics = leaderboard_columns() + tuple(x for x in truth_columns()
                                            if any(x in r.per_nodule.columns for r in runs)
                                            and all(x in r.per_nodule.columns for r in models_runs))
    medians = [m for m in leaderboard_columns() if metric_spec(m).median]
    has_empty = all("empty_pred" in r.per_nodule.columns for r in runs)

    def matrix(row: Row, col: str) -> np.ndarray:
        """(seeds x nodules) in one nodule order; NaN for a column the row's runs lack."""
        return np.stack([r.per_nodule.assign(nodule_id=r.per_nodule["nodule_id"].astype(str))
                         .set_index("nodule_id").loc[nodules, col].to_numpy(float)
                         if col in r.per_nodule.columns else np.full(n, np.nan) for r in row.runs])

    mats = {row.label: {m: matrix(row, m) for m in metrics} for row in rows}
    strata = dataset_strata_of(rows[0].runs[0].config)
    size_keys = dict(strata.size_bins)
    size_of = _size_bins(rows[0].runs[0].per_nodule, nodules, strata.size_bin)
    size_counts = {b: int(sum(s == b for s in size_of)) for b in size_keys}

    # one nodule draw for every row of every section (same seed, same nodules: paired across
    # tables too, e.g. tuned minus default); each row's seeds drawn from its own stream
    # a row pooling several tuning studies resamples them too (a third level); one study: two levels
    res = stats.draw_resamples({f"{section}:{row.label}": len(row.runs) for row in rows}, n, n_boot, boot_seed,
                               groups={f"{section}:{row.label}": row.studies for row in rows})
    boots = {row.label: _row_statistics(row, mats[row.label], res, f"{section}:{row.label}", metrics, medians,
                                        matrix(row, "empty_pred") if has_empty else None, size_keys, size_of)
             for row in rows}
    models = [r for r in rows if not r.reference]
    refs = [r for r in rows if r.reference]
    per_nodule_dice = {r.label: mats[r.label]["dice"].mean(axis=0) for r in rows}
    comparator = declared_comparator(runs)
    models, reference_arch = _rank_and_test(models, refs, rows, per_nodule_dice, mats, boots, res, ranking, section,
                                            comparator)
    # by Dice; a row without one (readers_vs_truth) last
    refs.sort(key=lambda r: (np.isnan(r.stats["dice_mean"]), -np.nan_to_num(r.stats["dice_mean"]), r.label))
    ordered = models + refs

    records = [_csv_record(r, section, n, metrics, medians, size_keys) for r in ordered]
    per_nodule = pd.DataFrame({r.label: per_nodule_dice[r.label] for r in ordered}, index=nodules).T
    devices = sorted({x.tags.get("device", "") for r in models for x in r.runs} - {""})
    return Leaderboard(key, ordered, pd.DataFrame.from_records(records), per_nodule, size_counts, ranking,
                       n_boot, boot_seed, devices=devices,
                       n_unscored=max(x.n_gt_empty for r in ordered for x in r.runs), section=section,
                       metrics=metrics, boots=boots, reference_arch=reference_arch, size_keys=size_keys,
                       comparator=comparator)


def _size_bins(df: pd.DataFrame, nodules: list[str], size_bin) -> list[str]:
    """Each nodule's size-bin label: the per-nodule CSV's, else ``size_bin(diameter_mm)``."""
    d = df.assign(nodule_id=df["nodule_id"].astype(str)).set_index("nodule_id")
    if "size_bin" in d.columns:
        return [str(v) for v in d.loc[nodules, "size_bin"]]
    if "diameter_mm" in d.columns:
        return [size_bin(float(v)) for v in d.loc[nodules, "diameter_mm"]]
    return [""] * len(nodules)




def all_rows(lb: Leaderboard) -> list[Row]:
    """Every row of every section, each once (the loss study reuses the final runs' rows)."""
    seen, out = set(), []
    for sec in [lb] + lb.sections:
        for r in sec.rows:
            key = (r.label, tuple(x.run_id for x in r.runs))   # readers_vs_truth shares inter_reader's run
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out
