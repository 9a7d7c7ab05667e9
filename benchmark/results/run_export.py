"""Run exports: everything behind a committed leaderboard, in the repository, without MLflow.

A committed leaderboard cites MLflow run ids, and the store that holds them is git-ignored, so
a fresh clone could check none of its numbers. ``bench leaderboard --export`` therefore writes,
beside the leaderboard, an *export* of the runs it was computed from; ``bench leaderboard
--from <export>`` recomputes the leaderboard from that folder alone (byte for byte), and
``bench import <export>`` loads the runs into the user's own tracking store for ``bench ui`` and
recreates the Optuna studies behind the tuned rows in the user's Optuna storage (default: the
project's journal), so ``bench tune --report STUDY`` works on a fresh clone.

Layout of an export folder (text only, one file per run, stable key order: diff-friendly)::

    <name>.runs/
      FORMAT.md              what is below (written with the export)
      manifest.json          format version, the MLflow experiment, run ids, sha256 of every file
      runs/<run_id>.json     run name, status, start/end time (ms), tags, params, final metrics,
                             per-epoch history {metric: [[step, value], ...]}, config (the run's
                             logged config.yaml, parsed)
      per_nodule/<run_id>.csv   the run's evaluation/per_nodule.csv, as logged (the rescored
                             table once `bench rescore --log` has run on it)
      studies/<study>.json   every Optuna study named by an exported run's tag optuna.study: its
                             directions, user attributes and every trial (number, state, params
                             with their distributions, values, intermediate values, user
                             attributes, start/complete times); see ``benchmark.results.study_export``

Checkpoints and pictures are not exported (they are not needed to recompute any number).
The manifest's hashes make a hand-edited export an error when it is read, not a silent change.
A study that cannot be found when exporting (no journal, or the study was deleted) is left out
with a warning; the manifest lists the studies the export holds ({name: file}).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd
import yaml

from benchmark.core.errors import DataError, TrackingError, UsageError

FORMAT_VERSION = 1
ORIGINAL_ID_TAG = "import.original_run_id"
ORIGINAL_EXPORT_TAG = "import.export"


def origin_run_id(run_id: str, tags: dict) -> str:
    """A run's id where it was trained. An imported run gets a new id in each store it is loaded
    into and keeps its first one in the tag ``import.original_run_id``; leaderboards cite it and
    exports file it under that first id, so it is one run with one name on every machine."""
    return tags.get(ORIGINAL_ID_TAG) or run_id

_FORMAT_NOTE = """# Run export (format {version})

Written by `bench leaderboard --export`; read by `bench leaderboard --from <this folder>` and
`bench import <this folder>`. Do not edit: `manifest.json` holds the sha256 of every file.

- `runs/<run_id>.json`: `run_name`, `status`, `start_time`/`end_time` (ms since epoch), `tags`,
  `params`, `metrics` (last value of each), `history` (`{{metric: [[step, value], ...]}}`) and
  `config` (the run's logged `config.yaml`). A run that was itself loaded by `bench import` is
  filed under its original id, so it keeps one id from machine to machine.
- `per_nodule/<run_id>.csv`: the run's `evaluation/per_nodule.csv` artifact, unchanged (for a run
  with the tag `evaluation.rescored=true`, its `evaluation/per_nodule_rescored.csv`).
- `studies/<study>.json`: an Optuna study behind the tuned runs (tag `optuna.study`): `study_name`,
  `directions`, `user_attrs` and `trials` (each: `number`, `state`, `params` as
  `{{name: {{value, distribution}}}}`, `values`, `intermediate_values` as `[[step, value], ...]`,
  `user_attrs`, `datetime_start`, `datetime_complete`). `bench import` recreates them in your Optuna
  storage; `manifest.json` maps each study name to its file.
"""


@dataclass
class ExportedRun:
    """One run as read back from an export (the fields the leaderboard needs, and the rest)."""
    run_id: str
    run_name: str
    status: str
    start_time: int
    end_time: int
    tags: dict
    params: dict
    metrics: dict
    history: dict
    config: dict
    per_nodule_csv: Optional[str]

    def per_nodule(self) -> Optional[pd.DataFrame]:
        return None if self.per_nodule_csv is None else pd.read_csv(io.StringIO(self.per_nodule_csv))


def _dump_json(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _study_file(name: str) -> str:
    """The export's file for a study: its name when that is a plain file name, else a hash of it
    (a study name is free text; a file name must not be able to name another path)."""
    plain = name and len(name) <= 100 and not name.startswith(".") and \
        all(c.isalnum() or c in "-_." for c in name)
    return f"studies/{name if plain else 'study-' + _sha256(name)[:16]}.json"


def _valid_run_id(run_id: str) -> str:
    # an id is an id: it becomes a file name, so it must not be able to name another path
    if not (isinstance(run_id, str) and 1 <= len(run_id) <= 64 and run_id.isalnum()):
        raise DataError(f"export: {run_id!r} is not a run id")
    return run_id


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def run_payload(cl, run_id: str) -> tuple[dict, Optional[str]]:
    """(the run's JSON document, its per-nodule CSV text or None) read from MLflow."""
    from benchmark.core.tracking import per_nodule_artifact
    run = cl.get_run(run_id)
    history = {}
    for key in sorted(run.data.metrics):
        points = cl.get_metric_history(run_id, key)
        history[key] = [[int(m.step), float(m.value)] for m in sorted(points, key=lambda m: (m.step, m.timestamp))]
    with tempfile.TemporaryDirectory() as tmp:
        config, csv_text = {}, None
        try:
            config = yaml.safe_load(Path(cl.download_artifacts(run_id, "config.yaml", tmp)).read_text()) or {}
        except Exception:  # noqa: BLE001 - reference runs log no config file
            config = {}
        try:
            csv_text = Path(cl.download_artifacts(run_id, per_nodule_artifact(run.data.tags), tmp)).read_text()
        except Exception:  # noqa: BLE001 - a run without test evaluation
            csv_text = None
    # filed under its original id; the import tags only said where this copy came from
    doc = {
        "run_id": origin_run_id(run_id, run.data.tags), "run_name": run.info.run_name or "", "status": run.info.status,
        "start_time": int(run.info.start_time or 0), "end_time": int(run.info.end_time or 0),
        "tags": {k: v for k, v in sorted(run.data.tags.items())
                 if not k.startswith("mlflow.log-model") and k not in (ORIGINAL_ID_TAG, ORIGINAL_EXPORT_TAG)},
        "params": dict(sorted(run.data.params.items())),
        "metrics": {k: float(v) for k, v in sorted(run.data.metrics.items())},
        "history": history, "config": config,
    }
    return doc, csv_text


def write_export(payloads: Iterable[tuple[dict, Optional[str]]], dest: Path, experiment: str = "",
                 studies: Iterable[dict] = ()) -> Path:
    """Write an export folder atomically (a reader never sees half of one). ``studies``: Optuna
    study documents (``benchmark.results.study_export.study_document``) to keep beside the runs."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "runs").mkdir(parents=True)
    (tmp / "per_nodule").mkdir()
    files: dict[str, str] = {}

    def put(rel: str, text: str):
        (tmp / rel).write_text(text, encoding="utf-8")
        files[rel] = _sha256(text)

    ids = []
    for doc, csv_text in payloads:
        rid = _valid_run_id(doc["run_id"])
        if rid in ids:
            # one run held twice by a store (trained there, and imported back from its own
            # export) is one run: filed once, listed once, so a leaderboard counts it once
            continue
        ids.append(rid)
        put(f"runs/{rid}.json", _dump_json(doc))
        if csv_text is not None:
            put(f"per_nodule/{rid}.csv", csv_text)
    study_files = {}
    for doc in studies:
        rel = _study_file(doc["study_name"])
        if not study_files:
            (tmp / "studies").mkdir()
        study_files[doc["study_name"]] = rel
        put(rel, _dump_json(doc))
    put("FORMAT.md", _FORMAT_NOTE.format(version=FORMAT_VERSION))
    manifest = {"format": FORMAT_VERSION, "experiment": experiment, "runs": sorted(ids),
                "studies": dict(sorted(study_files.items())), "files": dict(sorted(files.items()))}
    (tmp / "manifest.json").write_text(_dump_json(manifest), encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest


def export_runs(cl, run_ids: Iterable[str], dest: Path, experiment: str = "", studies: Iterable[dict] = ()) -> Path:
    """Export these MLflow runs (``experiment``: the name they were read from, kept for the record)
    and these Optuna study documents."""
    from benchmark.core.tracking import no_download_bars
    with no_download_bars():
        return write_export((run_payload(cl, rid) for rid in sorted(set(run_ids))), dest, experiment, studies)


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} is not a run export (no manifest.json)") from None
    except ValueError:
        raise DataError(f"{path}/manifest.json is not valid JSON") from None


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _checked_manifest(path: Path) -> dict:
    """The export's manifest, after checking its shape and that every file it lists is there,
    inside the export folder, unchanged."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"{path} is not a run export (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        _, files = manifest["runs"], manifest["files"]     # both are required
        if manifest.get("format") != FORMAT_VERSION:
            raise DataError(f"{manifest_path}: export format {manifest.get('format')!r}, this version reads "
                            f"{FORMAT_VERSION}")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{manifest_path} is not a valid export manifest ({type(e).__name__})") from None
    _check_manifest_shape(manifest_path, manifest)
    root = path.resolve()
    for rel, digest in files.items():
        f = _inside_export(path, root, rel)
        if _sha256(f.read_text(encoding="utf-8")) != digest:
            raise DataError(f"export {path}: {rel} does not match its sha256 in manifest.json (edited by hand?)")
    return manifest


def _check_manifest_shape(manifest_path: Path, manifest: dict) -> None:
    """runs: a list of ids; files: {relative path: sha256}; studies: {name: relative path}."""
    def bad(what):
        raise DataError(f"{manifest_path}: {what}")
    if not isinstance(manifest["runs"], list):
        bad(f"'runs' must be a list of run ids, not a {type(manifest['runs']).__name__}")
    if not isinstance(manifest["files"], dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in manifest["files"].items()):
        bad("'files' must map each file's relative path to its sha256")
    studies = manifest.get("studies") or {}
    if not isinstance(studies, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in studies.items()):
        bad("'studies' must map each study name to its file")


def _inside_export(path: Path, root: Path, rel: str) -> Path:
    """The file ``rel`` names, refused unless it is a plain relative path to a file that stays in
    the export folder once links are followed (nothing outside the export is ever read)."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or rel.startswith(("/", "\\")):
        raise DataError(f"export {path}: the manifest names {rel!r}, which is not a path inside the export")
    f = path / rel
    if not f.resolve().is_relative_to(root):
        raise DataError(f"export {path}: {rel} links outside the export folder; refused")
    if not f.is_file():
        raise DataError(f"export {path}: {rel} is listed in the manifest but missing")
    return f


#: the states MLflow accepts for a run (RunStatus)
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_run_doc(where: str, doc) -> None:
    """Every field of a run document has the type MLflow needs, so an import fails here, before
    it creates anything, rather than half-way through writing a run."""
    def bad(what):
        raise DataError(f"{where}: {what}")
    if not isinstance(doc, dict):
        bad("is not a JSON object")
    for key in ("tags", "params", "metrics"):
        if not isinstance(doc.get(key), dict):
            bad(f"{key!r} must be an object")
    if doc.get("status", "FINISHED") not in RUN_STATUSES:
        bad(f"status {doc.get('status')!r} is not one of {', '.join(RUN_STATUSES)}")
    if not isinstance(doc.get("run_name", ""), str):
        bad("run_name must be a string")
    for key in ("start_time", "end_time"):
        if not (isinstance(doc.get(key, 0), int) and not isinstance(doc.get(key, 0), bool) and doc.get(key, 0) >= 0):
            bad(f"{key} must be a whole number of milliseconds, got {doc.get(key)!r}")
    for key in ("tags", "params"):
        for k, v in doc[key].items():
            if not isinstance(v, str):
                bad(f"{key[:-1]} {k!r} has value {v!r}, not a string")
    for k, v in doc["metrics"].items():
        if not _is_number(v):
            bad(f"metric {k!r} has value {v!r}, not a number")
    history = doc.get("history", {})
    if not isinstance(history, dict):
        bad("'history' must be an object")
    for k, points in history.items():
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
                and _is_number(p[1]) for p in points):
            bad(f"history of metric {k!r} must be a list of [step, value] pairs of numbers")
    if not isinstance(doc.get("config") or {}, dict):
        bad("'config' must be an object")


def read_export(path: Path) -> list[ExportedRun]:
    """Every run of an export, after checking the manifest's hashes (one-line errors)."""
    path = Path(path)
    manifest = _checked_manifest(path)
    runs, files = manifest["runs"], manifest["files"]
    out = []
    for rid in dict.fromkeys(runs):     # an older export could list a run twice: read it once
        rid = _valid_run_id(rid)
        rel = f"runs/{rid}.json"
        if rel not in files:
            raise DataError(f"export {path}: run {rid} has no {rel} in the manifest")
        try:
            doc = json.loads((path / rel).read_text(encoding="utf-8"))
        except ValueError:
            raise DataError(f"export {path}: {rel} is not valid JSON") from None
        _check_run_doc(f"export {path}: {rel}", doc)
        csv_rel = f"per_nodule/{rid}.csv"
        csv_text = (path / csv_rel).read_text(encoding="utf-8") if csv_rel in files else None
        out.append(ExportedRun(rid, doc.get("run_name", ""), doc.get("status", "FINISHED"),
                               int(doc.get("start_time", 0)), int(doc.get("end_time", 0)), dict(doc["tags"]),
                               dict(doc["params"]), dict(doc["metrics"]), dict(doc.get("history", {})),
                               dict(doc.get("config") or {}), csv_text))
    return out


def read_studies(path: Path) -> list[dict]:
    """The Optuna study documents of an export (none for an export written before studies were)."""
    path = Path(path)
    manifest = _checked_manifest(path)
    docs = []
    for name, rel in sorted((manifest.get("studies") or {}).items()):
        if rel != _study_file(name) or rel not in manifest["files"]:
            raise DataError(f"export {path}: study {name!r} is listed as {rel!r}, not as its file in the manifest")
        doc = json.loads((path / rel).read_text(encoding="utf-8"))
        if doc.get("study_name") != name:
            raise DataError(f"export {path}: {rel} holds study {doc.get('study_name')!r}, not {name!r}")
        docs.append(doc)
    return docs


# ---------------------------------------------------------------------------------------------
# importing into a tracking store
# ---------------------------------------------------------------------------------------------
@dataclass
class Imported:
    runs: dict[str, str]        # original run id -> its id in the user's tracking store
    studies: dict[str, str]     # study name -> "created" | "present" | "completed" (study_export.import_studies)


def import_export(path: Path, experiment: Optional[str] = None, storage: Optional[str] = None) -> Imported:
    """Load an export's runs into the configured tracking store and its Optuna studies into
    ``storage`` (default: the project's journal).

    Runs already imported from the same original id, or trained in this store under that id
    (a machine importing its own export), are kept, not duplicated, and a study that
    already holds the export's trials is left alone, so importing twice is harmless. New runs keep
    every tag, param, metric history and time of the original and carry its id in the tag
    ``import.original_run_id``. A study of the same name holding other trials stops the import
    (``UsageError``) before anything is written.
    """
    from benchmark.results.study_export import import_studies
    from benchmark.core.tracking import client, experiment_id, load_settings
    runs = read_export(path)
    studies = import_studies(read_studies(path), storage)
    settings = load_settings()
    cl = client(settings)
    exp_id = experiment_id(cl, settings, experiment)
    mapping: dict[str, str] = {}
    try:
        existing = cl.search_runs([exp_id], f"tags.`{ORIGINAL_ID_TAG}` != ''", max_results=50000)
    except Exception as e:  # noqa: BLE001
        raise TrackingError(f"could not search the tracking store: {str(e).splitlines()[0]}") from None
    for r in existing:
        if _half_imported(r):
            cl.delete_run(r.info.run_id)     # left by an import that crashed before this check existed
            continue
        mapping[r.data.tags[ORIGINAL_ID_TAG]] = r.info.run_id
    for run in runs:
        if run.run_id in mapping:
            continue
        if _trained_here(cl, run.run_id):
            # the store the run was trained in, importing its own export (a protocol's
            # progress, on the machine that made it): the run is there already, under its id
            mapping[run.run_id] = run.run_id
        else:
            mapping[run.run_id] = _import_run(cl, exp_id, run, Path(path).name)
    return Imported(mapping, studies)


def _trained_here(cl, run_id: str) -> bool:
    """Whether this store holds the run under its own id and has not deleted it."""
    try:
        return cl.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - MLflow raises its own error for an unknown id
        return False


def _half_imported(run) -> bool:
    """A run an older version's import created and then crashed on: RUNNING, with nothing in it."""
    return run.info.status == "RUNNING" and not run.data.metrics and not run.data.params


def _import_run(cl, exp_id: str, run: ExportedRun, export_name: str) -> str:
    """Create one imported run with everything it holds; its id in this store. All or nothing:
    a run that fails half-way is deleted again, so importing a good export later is not skipped
    as "already present" because of an empty RUNNING run."""
    from benchmark.core.tracking import log_batch, per_nodule_artifact
    # MLflow's own tags travel too (source, commit, user): only the link to a parent run,
    # which stayed in the exporting store, is dropped
    tags = {k: v for k, v in run.tags.items() if k != "mlflow.parentRunId"}
    tags.update({ORIGINAL_ID_TAG: run.run_id, ORIGINAL_EXPORT_TAG: export_name,
                 "mlflow.runName": run.run_name or run.run_id})
    created = cl.create_run(exp_id, start_time=run.start_time or None, tags=tags, run_name=run.run_name or None)
    new_id = created.info.run_id
    try:
        log_batch(cl, new_id, params=run.params, history=run.history,
                  timestamp_ms=run.end_time or run.start_time or 0)
        # final values with no history (logged once, without a step)
        log_batch(cl, new_id, metrics={k: v for k, v in run.metrics.items() if k not in run.history},
                  timestamp_ms=run.end_time or 0)
        with tempfile.TemporaryDirectory() as tmp:
            if run.config:
                p = Path(tmp) / "config.yaml"
                p.write_text(yaml.safe_dump(run.config, sort_keys=False))
                cl.log_artifact(new_id, str(p))
            if run.per_nodule_csv is not None:
                # under the name the run's tags point to (a rescored run's table is the rescored one)
                folder, _, name = per_nodule_artifact(run.tags).rpartition("/")
                p = Path(tmp) / name
                p.write_text(run.per_nodule_csv)
                cl.log_artifact(new_id, str(p), folder)
        cl.set_terminated(new_id, run.status or "FINISHED", end_time=run.end_time or None)
    except Exception as e:  # noqa: BLE001 - whatever failed, leave no half-imported run behind
        try:
            cl.delete_run(new_id)
        except Exception:  # noqa: BLE001 - reported below either way
            pass
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise TrackingError(f"importing run {run.run_id} failed ({first}); the partly created run was "
                            f"deleted, nothing of it is left") from None
    return new_id

