"""Python packages for a lent GPU machine: packed here, unpacked there (issue 38).

The GPU machine (see ``docs/gpu-campaign.md``) has Python 3.12 with torch, numpy, scipy, pandas,
timm, einops, scikit-image and matplotlib, but none of SimpleITK, pylidc, SQLAlchemy, pydicom,
MLflow, MONAI, pydantic or Optuna, no internet, and takes at most 64 MiB per call: the working
tree (about 28 MiB today, mostly committed run exports) plus the carried folders. SimpleITK alone
is 27 MiB even as ``tar.xz`` (its one shared library is 272 MB), so the packages travel in two
calls, each with one carried folder:

* ``.gpu-sitk/site.tar.xz``: SimpleITK (27 MiB);
* ``.gpu-deps/site.tar.xz``: everything else the crop build, training, MLflow and the export
  import that the image lacks (about 12 MiB), and ``commit.txt`` (the device copy has no ``.git``).

Both are unpacked into ``.gpu-site/`` in the device's copy of the repository, an ignored folder
that a warm machine keeps between calls (30 s), and put on ``PYTHONPATH``. The wheels are the
device's (CPython 3.12, manylinux x86-64), at the versions installed here, fetched with this
machine's pip (``pip download``); nothing is installed here.

    python perf/gpu_pack.py            # writes .gpu-sitk/ and .gpu-deps/, prints the sizes
    python perf/gpu_pack.py --check    # only the sizes of what exists (tree + each carry)
    python perf/gpu_pack.py --keep-sitk   # re-pack all but SimpleITK (after a version change elsewhere)
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITK_DIR, DEPS_DIR, SITE_DIR = ".gpu-sitk", ".gpu-deps", ".gpu-site"
ARCHIVE = "site.tar.xz"
COMMIT_FILE = "commit.txt"
#: the device tool's limit on what one call sends (working tree + carried paths)
CALL_LIMIT_MIB = 64

#: distributions imported by the crop build, `bench run` (training, evaluation, MLflow logging),
#: the run export and the leaderboard, that the device image lacks. Derived on 2026-12-06 from
#: the distributions of every module in ``sys.modules`` after a smoke run, the crop build and
#: building the campaign's architectures here, minus the image's package list (the device
#: tool's KINDS.md, read 2026-11-17) and minus IPython's family and orjson (both imported only
#: if present; orjson 3.8 has no wheel for 3.12) and minus what setuptools vendors (jaraco.*,
#: more-itertools, platformdirs, backports.tarfile). An import check of the packed set on Python
#: 3.12 here (crop build, MLflow's SQLite store) found cryptography missing from the first list.
DEVICE_MISSING = (
    "pylidc", "pydicom", "SQLAlchemy", "alembic", "Mako", "mlflow-skinny", "monai", "pydantic", "pydantic_core",
    "annotated-types", "typing-inspection", "optuna", "colorlog", "dynamic_network_architectures",
    "databricks-sdk", "google-auth", "cachetools", "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto",
    "opentelemetry-semantic-conventions", "importlib_metadata", "fastapi", "starlette", "sqlparse",
    "GitPython", "gitdb", "smmap", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
    "pyasn1", "pyasn1_modules", "rsa", "python-dotenv", "sniffio",
    # MLflow's SQLite store imports the model registry's tables, which import cryptography
    "cryptography", "cffi", "pycparser",
    # the image has its own of these two, of versions not known here: setuptools >= 81 dropped the
    # pkg_resources that pylidc imports, and MLflow's generated protobuf code refuses an older runtime
    "setuptools", "protobuf",
)
SITK = "simpleitk"

_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
              "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")


def _pin(dist: str) -> str:
    return f"{dist}=={metadata.version(dist)}"


def download(dists, dest: Path) -> list[Path]:
    """The device's wheels (CPython 3.12, manylinux x86-64) of these distributions at this machine's versions."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest)]
    for plat in _PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + [_pin(d) for d in dists], check=True)
    return sorted(dest.glob("*.whl"))


def pack_wheels(wheels, archive: Path) -> int:
    """Unpack the wheels into one tree and write it as ``tar.xz`` (xz packs far tighter than the
    wheels' zip: 12 MiB against 27 for the same files). Returns the archive's size in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
        archive.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(site), "-cf", str(archive), "-I", "xz -6 -T0", "."], check=True)
    return archive.stat().st_size


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what a device call sends besides the carried folders: tracked and untracked, not
    ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def exclude(root: Path = ROOT) -> None:
    """Ignore the carried and unpacked folders in this checkout only (``.git/info/exclude``)."""
    info = Path(subprocess.run(["git", "-C", str(root), "rev-parse", "--git-path", "info/exclude"],
                               capture_output=True, text=True, check=True).stdout.strip())
    info = info if info.is_absolute() else root / info
    info.parent.mkdir(parents=True, exist_ok=True)
    have = info.read_text().splitlines() if info.exists() else []
    new = [f"/{d}/" for d in (SITK_DIR, DEPS_DIR, SITE_DIR) if f"/{d}/" not in have]
    if new:
        with info.open("a") as f:
            f.write("".join(line + "\n" for line in new))


def sizes(root: Path = ROOT) -> dict:
    mib = 2 ** 20
    tree = tree_bytes(root) / mib
    calls = {name: (tree + folder_bytes(root / d) / mib) for name, d in (("stage", SITK_DIR), ("campaign", DEPS_DIR))}
    return {"tree_mib": round(tree, 1), **{f"{k}_call_mib": round(v, 1) for k, v in calls.items()},
            "limit_mib": CALL_LIMIT_MIB, "fits": all(v < CALL_LIMIT_MIB for v in calls.values())}


def pack(root: Path = ROOT, keep_sitk: bool = False) -> dict:
    """Write both carried folders (``keep_sitk``: keep an existing SimpleITK archive; packing it
    takes minutes of xz)."""
    exclude(root)
    keep_sitk = keep_sitk and (root / SITK_DIR / ARCHIVE).is_file()
    with tempfile.TemporaryDirectory() as tmp:
        if not keep_sitk:
            sitk = download([SITK], Path(tmp) / "sitk")
            shutil.rmtree(root / SITK_DIR, ignore_errors=True)
            pack_wheels(sitk, root / SITK_DIR / ARCHIVE)
        deps = download(DEVICE_MISSING, Path(tmp) / "deps")
        shutil.rmtree(root / DEPS_DIR, ignore_errors=True)
        pack_wheels(deps, root / DEPS_DIR / ARCHIVE)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    (root / DEPS_DIR / COMMIT_FILE).write_text(commit + ("+dirty" if dirty else "") + "\n")
    return sizes(root)


def install(root: Path = ROOT, target: Path | None = None) -> list[str]:
    """Unpack whichever carried archives are present into ``.gpu-site/`` (on the device); returns
    the folders unpacked. A warm machine keeps the folder between calls."""
    target = target or root / SITE_DIR
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for d in (SITK_DIR, DEPS_DIR):
        archive = root / d / ARCHIVE
        marker = target / f".{d.lstrip('.')}.unpacked"
        stamp = f"{archive.stat().st_size}\n" if archive.is_file() else ""
        if not archive.is_file() or (marker.is_file() and marker.read_text() == stamp):
            continue                # absent, or unpacked by an earlier call on this warm machine
        with tarfile.open(archive, "r:xz") as tar:   # Python's own xz: the device may lack the xz tool
            tar.extractall(target, filter="data")
        marker.write_text(stamp)
        done.append(d)
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only print the sizes of what is already packed")
    p.add_argument("--install", action="store_true", help="(on the device) unpack the carried archives")
    p.add_argument("--keep-sitk", action="store_true", help="keep an already packed .gpu-sitk/ (re-pack the rest)")
    args = p.parse_args()
    if args.install:
        print("unpacked: " + (", ".join(install()) or "nothing new (no carried archive, or unpacked already)"))
        return
    s = sizes() if args.check else pack(keep_sitk=args.keep_sitk)
    print(f"working tree {s['tree_mib']} MiB; stage call (tree + {SITK_DIR}) {s['stage_call_mib']} MiB; "
          f"campaign call (tree + {DEPS_DIR}) {s['campaign_call_mib']} MiB; limit {s['limit_mib']} MiB per call: "
          + ("fits" if s["fits"] else "DOES NOT FIT"))
    if not s["fits"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
