"""The offline buffer: what a run logs while its tracking store does not answer, and its replay.

``Tracker`` appends one JSON record per logging call to ``runs/offline/<run_id>.jsonl`` once
the store stops answering; ``bench sync`` (and the run itself, when it ends) sends them with
``benchmark.core.tracking.sync_offline``. A buffer is plain text that anyone can edit, so this
module checks every record (kind, fields, value types, artifact files) before any is sent.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmark.core.errors import UsageError
from benchmark.core.paths import checkpoints_dir, offline_dir


def buffered_files_dir(run_id: str) -> Path:
    """Copies of the files a run logged while its server was away (``bench sync`` uploads them)."""
    return offline_dir() / f"{run_id}.files"


def _artifact_roots(run_id: str) -> list[Path]:
    """The only folders ``bench sync`` uploads artifacts from: the run's checkpoint folder and
    its buffered copies. A record naming any other file is refused (a buffer is plain text that
    anyone can edit; it must not turn ``bench sync`` into an upload of arbitrary files)."""
    return [checkpoints_dir(run_id).resolve(), buffered_files_dir(run_id).resolve()]


def buffered_artifact(run_id: str, path: str | Path) -> Path:
    """The file a buffered artifact record names: the run's own checkpoint-folder file as is,
    anything else (temporary folders, leaderboards/) copied under ``buffered_files_dir``."""
    src = Path(path).resolve()
    if src.is_relative_to(checkpoints_dir(run_id).resolve()):
        return src
    import shutil
    import uuid
    dest = buffered_files_dir(run_id) / uuid.uuid4().hex[:12] / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    return dest


SYNC_KINDS = {"metrics": ("metrics", "step", "timestamp"), "params": ("params",), "tags": ("tags",),
              "artifact": ("path", "artifact_path"), "text": ("text", "name"), "status": ("status",)}


def _record_type_problem(rec: dict) -> str | None:
    """What makes a buffered record unsendable (a value of the wrong type), or None: checked for
    every record before any is sent, so a bad line cannot stop a replay half-way."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def strings(d):
        return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
    kind = rec["kind"]
    if kind == "metrics":
        if not isinstance(rec["metrics"], dict):
            return "metrics must map names to numbers"
        for k, v in rec["metrics"].items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"metric {k!r} is {v!r}, not a number"
        if not (whole(rec["step"]) and whole(rec["timestamp"])):
            return "step and timestamp must be whole numbers"
    elif kind in ("params", "tags") and not strings(rec[kind]):
        return f"{kind} must map names to strings"
    elif kind == "artifact" and not (isinstance(rec["path"], str) and isinstance(rec["artifact_path"], (str, type(None)))):
        return "path and artifact_path must be strings"
    elif kind == "text" and not (isinstance(rec["text"], str) and isinstance(rec["name"], str)):
        return "text and name must be strings"
    elif kind == "status" and rec["status"] not in ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"):
        return f"status {rec['status']!r} is not a run status"
    return None


def parse_buffer(p: Path, run_id: str) -> tuple[list[dict], str | None]:
    """Records of a buffer, all checked before anything is sent, and a torn last line (or None).

    The last line may be torn (the run was killed, or is still writing): it is left for a later
    sync. Any other malformed line, unknown kind or artifact outside the run's folders is an
    error that names the line.
    """
    lines = p.read_text(errors="replace").split("\n")
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    roots = _artifact_roots(run_id)
    records, torn = [], None
    for n, (i, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(numbered) - 1:
                torn = line
                continue
            raise UsageError(f"{p} line {i} is not a JSON record; nothing was replayed") from None
        kind = rec.get("kind") if isinstance(rec, dict) else None
        if kind not in SYNC_KINDS:
            raise UsageError(f"{p} line {i}: unknown record kind {kind!r} (known: {', '.join(SYNC_KINDS)}); "
                             f"nothing was replayed")
        missing = [f for f in SYNC_KINDS[kind] if f not in rec]
        if missing:
            raise UsageError(f"{p} line {i}: {kind} record lacks {missing}; nothing was replayed")
        problem = _record_type_problem(rec)
        if problem:
            raise UsageError(f"{p} line {i}: {kind} record: {problem}; nothing was replayed")
        if kind == "artifact":
            f = Path(str(rec["path"])).resolve()
            if not any(f.is_relative_to(r) for r in roots):
                raise UsageError(f"{p} line {i}: artifact {rec['path']} is not a file this run buffered (only "
                                 f"files under {roots[0]} or {roots[1]} are uploaded); nothing was replayed")
            if not f.is_file():
                raise UsageError(f"{p} line {i}: buffered artifact {f} is missing; nothing was replayed")
        records.append(rec)
    return records, torn
