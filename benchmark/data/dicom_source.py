"""Real LIDC-IDRI images: load a scan's DICOM series through pylidc and cut the native box.

Used when pylidc's config (``~/.pylidcrc``, ``[dicom] path = ...``) names the LIDC-IDRI
folder; the crops then go through exactly the same ground-truth and resampling code as the
phantom. pylidc finds the series (``<root>/<patient>/<study uid>/<series uid>/`` or a search
under ``<root>/<patient>/`` for files carrying the scan's UIDs), reads every ``*.dcm`` with
pydicom, drops duplicate z positions and sorts by z; we then

* match each slice's z (ImagePositionPatient[2]) to the database's slice z values (the
  contours are indexed by them), within 1/4 slice spacing;
* accept a series that covers a contiguous run of the database's slices (a full scan, or a
  reduced region as the tests write), and raise DataError naming the scan and the missing z
  positions when a slice inside the needed range is absent (a gap);
* turn unreadable / corrupt files into DataError naming the file.

Pixel values are converted to HU with RescaleSlope/RescaleIntercept. Parts of the box outside
the scan are air (-1000 HU).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.core.errors import DataError
from benchmark.data import pylidc_adapter as pla
from benchmark.data.geometry import AIR_HU, extract_box

__all__ = ["ScanVolume", "load_scan_volume", "native_image"]


class ScanVolume:
    """A loaded series: HU volume (z, y, x) covering database slices [k0, k0 + nz)."""

    def __init__(self, patient_id: str, hu: np.ndarray, k0: int, n_slices_db: int):
        self.patient_id = patient_id
        self.hu = hu
        self.k0 = k0
        self.n_slices_db = n_slices_db

    def box(self, lo_zyx, hi_zyx) -> np.ndarray:
        lo = np.asarray(lo_zyx)
        hi = np.asarray(hi_zyx)
        # database slices the box needs that the scan has
        need_lo, need_hi = max(lo[0], 0), min(hi[0], self.n_slices_db)
        have_lo, have_hi = self.k0, self.k0 + self.hu.shape[0]
        if need_lo < need_hi and (need_lo < have_lo or need_hi > have_hi):
            raise DataError(
                f"{self.patient_id}: DICOM series covers slices {have_lo}-{have_hi - 1} of "
                f"{self.n_slices_db}, but the nodule needs {need_lo}-{need_hi - 1} (missing slices)")
        shifted_lo = lo.copy()
        shifted_hi = hi.copy()
        shifted_lo[0] -= self.k0
        shifted_hi[0] -= self.k0
        out = extract_box(self.hu, shifted_lo, shifted_hi, AIR_HU)
        # slices outside the scan itself (not just outside the loaded run) are air already
        return out


def _find_corrupt(scan) -> str:
    import pydicom
    try:
        path = Path(scan.get_path_to_dicom_files())
    except Exception:
        return "?"
    for f in sorted(path.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(f)
            ds.pixel_array
        except Exception:
            return str(f)
    return str(path)


def load_scan_volume(scan) -> ScanVolume:
    geo = pla.scan_geometry(scan)
    try:
        images = pla.load_dicom_images(scan)
    except DataError as e:
        if "corrupt" in str(e) or "cannot read" in str(e):
            raise DataError(f"{scan.patient_id}: corrupt or unreadable DICOM file {_find_corrupt(scan)}") from None
        raise
    if not images:
        raise DataError(f"{scan.patient_id}: no DICOM files of series {scan.series_instance_uid} found")
    zdb = geo["zvals"]
    tol = 0.25 * geo["slice_spacing"]
    ks = []
    for im in images:
        try:
            z = float(im.ImagePositionPatient[2])
        except Exception:
            raise DataError(f"{scan.patient_id}: DICOM file {getattr(im, 'filename', '?')} lacks "
                            f"ImagePositionPatient") from None
        k = int(np.argmin(np.abs(zdb - z)))
        if abs(zdb[k] - z) > tol:
            raise DataError(f"{scan.patient_id}: DICOM file {getattr(im, 'filename', '?')} at "
                            f"z={z:.2f} matches no slice of the scan in the database")
        ks.append(k)
    ks_arr = np.array(ks)
    k0, k1 = int(ks_arr.min()), int(ks_arr.max())
    present = set(ks)
    gaps = [k for k in range(k0, k1 + 1) if k not in present]
    if gaps:
        zs = ", ".join(f"{zdb[k]:.2f}" for k in gaps[:5])
        raise DataError(f"{scan.patient_id}: DICOM series has {len(gaps)} missing slice(s) "
                        f"(z = {zs}{'...' if len(gaps) > 5 else ''} mm) in "
                        f"{pla.dicom_root() or ''}")
    slices = []
    for im in images:
        try:
            px = im.pixel_array.astype(np.float32)
        except Exception as e:
            raise DataError(f"{scan.patient_id}: corrupt DICOM file {getattr(im, 'filename', '?')} "
                            f"({type(e).__name__}: {e})") from None
        slope = float(getattr(im, "RescaleSlope", 1.0))
        icpt = float(getattr(im, "RescaleIntercept", 0.0))
        slices.append(px * slope + icpt)
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise DataError(f"{scan.patient_id}: DICOM slices have different sizes {sorted(shapes)}")
    return ScanVolume(scan.patient_id, np.stack(slices), k0, geo["n_slices"])


def native_image(volume: ScanVolume, lo_zyx, hi_zyx) -> np.ndarray:
    return volume.box(lo_zyx, hi_zyx).astype(np.float32)


def write_series(root: Path, row, hu_zyx: np.ndarray, k0: int, image_size: int = 512,
                 corner_xy=(-200.0, -200.0)) -> Path:
    """Write a CT series that pylidc loads as scan ``row`` (tests and demos).

    ``hu_zyx`` (nz, image_size, image_size) HU values become database slices k0 .. k0+nz-1,
    with the scan's study/series UIDs, pixel spacing, slice thickness and slice z positions
    taken from the database, in pylidc's classic layout <root>/<patient>/<study>/<series>/.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    scan = pla.get_scan(int(row["scan_id"]))
    zvals = pla.scan_geometry(scan)["zvals"]
    folder = Path(root) / scan.patient_id / scan.study_instance_uid / scan.series_instance_uid
    folder.mkdir(parents=True, exist_ok=True)
    ps = float(scan.pixel_spacing)
    for n, plane in enumerate(np.asarray(hu_zyx)):
        k = k0 + n
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = scan.patient_id
        ds.StudyInstanceUID = scan.study_instance_uid
        ds.SeriesInstanceUID = scan.series_instance_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [corner_xy[0], corner_xy[1], float(zvals[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [ps, ps]
        ds.SliceThickness = float(scan.slice_thickness)
        ds.Rows = ds.Columns = int(image_size)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        stored = np.clip(np.rint(plane + 1024.0), -32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(path, enforce_file_format=True)
    del pydicom
    return folder
