"""`bench predict`: masks land on the nodule in world coordinates, whatever the scan's geometry.

A generated CT (SimpleITK: anisotropic spacing, an origin, a rotated direction) holds two
planted spheres of soft tissue in air. A stand-in model that segments bright voxels (the
model's role here is only to mark what it sees) is applied at one sphere's world location:
the label map must cover that sphere on the scan's own grid and leave the other alone.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from benchmark.core.errors import UsageError
from benchmark.run.predict import Predictor, cut_crop, parse_point, predict_at, read_ct, read_locations, to_world

SPACING = (0.7, 0.8, 2.5)      # x, y, z mm: a typical CT voxel
SIZE = (64, 64, 28)            # x, y, z voxels
RADIUS_MM = 6.0


class BrightIsNodule(nn.Module):
    """Logits > 0 where the normalised intensity is above the midpoint of air (-1000 HU) and the
    planted soft tissue (40 HU): -480 HU, 0.371 in the default window."""

    def forward(self, x):
        return (x - 520.0 / 1400.0) * 40.0


def _direction(angle_deg: float):
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return tuple(rot.flatten())


def make_ct(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(-150.0, -170.0, -310.0)):
    """CT with spheres at two world points; returns (image, [centre_lps...], sphere masks zyx)."""
    import SimpleITK as sitk
    img = sitk.Image(list(SIZE), sitk.sitkFloat32)
    img.SetSpacing(SPACING)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    centres_idx = [(20.3, 24.6, 6.2), (44.0, 40.0, 23.0)]  # 42 mm apart in z: one patch each
    centres = [np.array(img.TransformContinuousIndexToPhysicalPoint(c)) for c in centres_idx]
    # world position of every voxel, to plant the spheres in world space
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in SIZE[::-1]], indexing="ij")
    idx = np.stack([xx, yy, zz], -1).reshape(-1, 3).astype(float)
    d = np.array(direction).reshape(3, 3)
    world = (d @ (idx * np.array(SPACING)).T).T + np.array(origin)
    arr = np.full(len(world), -1000.0, np.float32)
    masks = []
    for c in centres:
        inside = np.linalg.norm(world - c, axis=1) <= RADIUS_MM
        arr[inside] = 40.0
        masks.append(inside.reshape(SIZE[::-1]))
    ct = sitk.GetImageFromArray(arr.reshape(SIZE[::-1]))
    ct.CopyInformation(img)
    return ct, centres, masks


def standin(spacing_mm=2.0, crop_zyx=(20, 40, 40), patch_zyx=(16, 32, 32)):
    return Predictor(BrightIsNodule(), spacing_mm, crop_zyx, patch_zyx, (-1000.0, 400.0), 0.5)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_predicted_mask_lands_on_the_nodule_in_world_coordinates(angle):
    import SimpleITK as sitk
    ct, centres, masks = make_ct(direction=_direction(angle))
    labels, counts = predict_at(standin(), ct, [centres[0]])
    lab = sitk.GetArrayFromImage(labels)
    # same grid and world frame as the scan
    assert labels.GetOrigin() == ct.GetOrigin() and labels.GetDirection() == ct.GetDirection()
    assert labels.GetSpacing() == ct.GetSpacing() and labels.GetSize() == ct.GetSize()
    assert counts[0] == int((lab == 1).sum()) > 0
    assert _dice(lab == 1, masks[0]) > 0.8
    assert not np.logical_and(lab > 0, masks[1]).any()     # the other sphere is outside the patch
    # the mask's centre of mass, in world mm, is the planted centre
    com_zyx = np.argwhere(lab == 1).mean(0)
    com = np.array(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in com_zyx[::-1]]))
    assert np.linalg.norm(com - centres[0]) < 1.0


def test_voxel_and_ras_locations_are_the_same_point():
    ct, centres, _ = make_ct(direction=_direction(30.0))
    ijk = ct.TransformPhysicalPointToContinuousIndex([float(v) for v in centres[0]])
    assert np.allclose(to_world(ct, ijk, voxel=True), centres[0], atol=1e-6)
    ras = (-centres[0][0], -centres[0][1], centres[0][2])
    assert np.allclose(to_world(ct, ras, ras=True), centres[0])


def test_crop_matches_the_training_geometry():
    """The cut crop is centred on the point: its centre voxel is the sphere's brightest."""
    ct, centres, _ = make_ct()
    crop, grid = cut_crop(ct, centres[0], 2.0, (21, 41, 41))
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([20.0, 20.0, 10.0]))
    assert np.allclose(centre, centres[0], atol=1e-6)
    assert crop[10, 20, 20] > -100 and crop[0, 0, 0] == pytest.approx(-1000.0, abs=1)


def test_ct_files_and_location_input(tmp_path):
    import SimpleITK as sitk
    ct, centres, _ = make_ct()
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(ct, str(path))
    back = read_ct(path)
    assert np.allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    csv = tmp_path / "nodules.csv"
    csv.write_text("id,x,y,z\nA,1.5,-2,3\n")
    assert read_locations(csv) == [("A", (1.5, -2.0, 3.0))]
    assert parse_point("1, 2, 3") == (1.0, 2.0, 3.0)
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(UsageError):
            parse_point(bad)
    with pytest.raises(UsageError, match="no CT"):
        read_ct(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UsageError, match="x,y,z"):
        read_locations(tmp_path / "bad.csv")


def write_dicom_series(ct, folder):
    """``ct`` as a CT DICOM series (one file per slice, pydicom), its geometry in the standard
    tags: ImagePositionPatient per slice, ImageOrientationPatient from the direction's first two
    columns, PixelSpacing as (row, column) = (y, x) spacing."""
    import SimpleITK as sitk
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    folder.mkdir(parents=True)
    arr = sitk.GetArrayFromImage(ct)
    d = np.array(ct.GetDirection()).reshape(3, 3)
    sx, sy, sz = ct.GetSpacing()
    study, series = generate_uid(), generate_uid()
    for k, plane in enumerate(arr):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "PHANTOM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, k + 1
        ds.ImagePositionPatient = [float(v) for v in ct.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing, ds.SliceThickness = [sy, sx], sz
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        ds.PixelData = np.rint(plane + 1024.0).astype(np.int16).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_dicom_series_folder_gives_the_same_world_frame_and_mask(tmp_path, angle):
    """A DICOM series folder is read into the same world frame as the image it was written
    from (a rotated scan included), and the predicted mask lands on the planted sphere."""
    import SimpleITK as sitk
    ct, centres, masks = make_ct(direction=_direction(angle))
    back = read_ct(write_dicom_series(ct, tmp_path / "series"))
    assert back.GetSize() == ct.GetSize()
    assert np.allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    assert np.allclose(back.GetSpacing(), ct.GetSpacing(), atol=1e-4)
    assert np.allclose(back.GetDirection(), ct.GetDirection(), atol=1e-5)
    assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct), atol=0.5)
    labels, counts = predict_at(standin(), back, [centres[0]])
    lab = sitk.GetArrayFromImage(labels)
    assert counts[0] > 0 and _dice(lab == 1, masks[0]) > 0.8 and not np.logical_and(lab > 0, masks[1]).any()


def test_folder_with_two_series_or_none_is_one_clear_error(tmp_path):
    ct, _, _ = make_ct()
    write_dicom_series(ct, tmp_path / "two" / "a")
    write_dicom_series(ct, tmp_path / "two" / "b")
    import shutil
    for f in (tmp_path / "two" / "b").iterdir():
        shutil.move(str(f), tmp_path / "two" / "a" / f"b{f.name}")
    with pytest.raises(UsageError, match="2 DICOM series"):
        read_ct(tmp_path / "two" / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no DICOM series"):
        read_ct(tmp_path / "empty")


@pytest.mark.slow  # a CLI subprocess
def test_predict_cli_rejects_a_path_as_run_id(tmp_path):
    from tests.conftest import run_cli
    r = run_cli("predict", "--run", "../../etc/passwd", "--ct", str(tmp_path), "--at", "0,0,0")
    assert r.returncode != 0 and "not a run id" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # validates the smoke crop cache
def test_split_export_has_the_world_frame_of_the_index(tmp_path):
    """Crops exported from the smoke cache: centred on the index centroid (mm), GT as stored."""
    import SimpleITK as sitk
    from benchmark.run.config import build_config
    from benchmark.data import load_crops
    from benchmark.run.predict import export_split
    cfg = build_config("smoke", **{"model.arch": "unet3d"})
    store = load_crops(cfg.data, progress=False)
    p = Predictor(BrightIsNodule(), store.spacing_mm, tuple(cfg.data.crop_zyx), tuple(cfg.data.patch_zyx),
                  tuple(cfg.data.hu_window), 0.5)
    files = export_split(p, store, "test", tmp_path)
    rows = store.indices("test")
    assert len(files) == 3 * len(rows)
    rec = store.table.iloc[rows[0]]
    img = sitk.ReadImage(str(tmp_path / f"{rec['nodule_id']}_image.nii.gz"))
    gt = sitk.ReadImage(str(tmp_path / f"{rec['nodule_id']}_gt.nii.gz"))
    size = np.array(img.GetSize(), float)
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(list((size - 1) / 2)))
    assert np.allclose(centre, [rec["centroid_x_mm"], rec["centroid_y_mm"], rec["centroid_z_mm"]], atol=1e-3)
    assert img.GetSpacing() == (store.spacing_mm,) * 3
    assert np.array_equal(sitk.GetArrayFromImage(gt), store.gt[rows[0]])
    assert np.allclose(sitk.GetArrayFromImage(img), store.images_hu[rows[0]], atol=0.5)


def test_negative_coordinates_are_values_not_options():
    """`--at -52.1,-180,-125` is a point (argparse alone reads the value as an unknown option)."""
    from benchmark.cli.main import _attach_coordinates
    argv = ["predict", "--at", "-52.1,-180,-125", "--at", "-.5,1,2", "--at", "3,4,5", "--run", "x"]
    assert _attach_coordinates(argv) == ["predict", "--at=-52.1,-180,-125", "--at=-.5,1,2", "--at", "3,4,5",
                                         "--run", "x"]
