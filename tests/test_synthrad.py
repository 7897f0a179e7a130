"""Reading the SynthRAD layout and every kind of bad input, with and without --skip-bad."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fedi2i.data.phantom import make_phantom_head
from fedi2i.data.slices import slice_patients
from fedi2i.data.synthrad import centre_from_id, load_centre_mapping, load_patient, scan_dataset, write_patient
from fedi2i.errors import DataError


def _write(root: Path, pid: str, fmt: str = "nii.gz", seed: int = 0) -> Path:
    mr, ct, mask = make_phantom_head((16, 32, 32), seed=seed)
    return write_patient(root, pid, mr, ct, mask, spacing=(8.0, 7.5, 7.5), fmt=fmt)  # a 240 mm field of view


def test_round_trip_nifti_and_mha(tmp_path: Path) -> None:
    mr, ct, mask = make_phantom_head((16, 32, 32), seed=3)
    write_patient(tmp_path, "1BA001", mr, ct, mask, spacing=(2.0, 1.5, 1.5))
    write_patient(tmp_path, "1BB001", mr, ct, mask, spacing=(2.0, 1.5, 1.5), fmt="mha")
    records = scan_dataset(tmp_path)
    assert [(r.pid, r.centre) for r in records] == [("1BA001", "A"), ("1BB001", "B")]
    for record in records:
        vol = load_patient(record)
        np.testing.assert_allclose(vol.mr, mr, rtol=1e-6)
        np.testing.assert_array_equal(vol.ct, np.rint(ct))
        np.testing.assert_array_equal(vol.mask, mask)
        assert vol.spacing == (2.0, 1.5, 1.5)


def test_centre_from_mapping_file(tmp_path: Path) -> None:
    _write(tmp_path / "data", "patient_x")
    (tmp_path / "map.csv").write_text("pid,centre\npatient_x,Z\n")
    records = scan_dataset(tmp_path / "data", load_centre_mapping(tmp_path / "map.csv"))
    assert records[0].centre == "Z"
    assert centre_from_id("1BC012") == "C" and centre_from_id("foo") is None
    with pytest.raises(DataError, match="cannot tell the centre"):
        scan_dataset(tmp_path / "data")


def _corrupt(folder: Path, kind: str) -> str:
    """Damage one patient folder; returns the file name the error must mention."""
    if kind == "missing":
        (folder / "ct.nii.gz").unlink()
        return "missing ct"
    if kind == "unreadable":
        (folder / "mr.nii.gz").write_bytes(b"this is not an image")
        return "mr.nii.gz"
    if kind == "shape":
        img = sitk.GetImageFromArray(np.zeros((16, 30, 32), np.uint8))
        img.SetSpacing((7.5, 7.5, 8.0))
        sitk.WriteImage(img, str(folder / "mask.nii.gz"))
        return "mask.nii.gz"
    if kind == "affine":
        img = sitk.ReadImage(str(folder / "mr.nii.gz"))
        img.SetOrigin((5.0, 0.0, 0.0))
        sitk.WriteImage(img, str(folder / "mr.nii.gz"))
        return "mr.nii.gz"
    if kind == "nonfinite":
        img = nib.load(str(folder / "mr.nii.gz"))
        arr = np.asarray(img.dataobj).copy()
        arr[3, 4, 5] = np.nan
        arr[1, 2, 3] = np.inf
        nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(folder / "mr.nii.gz"))
        return "mr.nii.gz"
    if kind == "empty_mask":
        img = sitk.ReadImage(str(folder / "mask.nii.gz"))
        out = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
        out.CopyInformation(img)
        sitk.WriteImage(out, str(folder / "mask.nii.gz"))
        return "mask.nii.gz"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unreadable", "shape", "affine", "nonfinite", "empty_mask"])
def test_bad_input_names_patient_and_file(tmp_path: Path, kind: str) -> None:
    _write(tmp_path, "1BA001", seed=1)
    bad = _write(tmp_path, "1BA002", seed=2)
    expected = _corrupt(bad, kind)
    records = scan_dataset(tmp_path)
    with pytest.raises(DataError) as info:
        load_patient(records[1])
    message = str(info.value)
    assert "1BA002" in message and expected in message
    with pytest.raises(DataError):
        slice_patients(records, 32, (0.5, 99.5))
    # with skip_bad the good patient survives, the bad one is left out with its reason, and nothing else is lost
    slices, skipped = slice_patients(records, 32, (0.5, 99.5), skip_bad=True)
    assert list(slices) == ["1BA001"] and slices["1BA001"].patients == ["1BA001"]
    assert list(skipped) == ["1BA002"] and expected in skipped["1BA002"]
    assert load_patient(records[0]).mr.shape == (16, 32, 32)


def test_missing_root_is_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no patient folders"):
        scan_dataset(tmp_path / "empty")


def test_data_inspect_reports_problems(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedi2i.cli import app

    _write(tmp_path, "1BA001", seed=1)
    _corrupt(_write(tmp_path, "1BA002", seed=2), "nonfinite")
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 3
    assert "non-finite" in result.output and "1BA001" in result.output
    shutil.rmtree(tmp_path / "1BA002")
    assert CliRunner().invoke(app, ["data", "inspect", str(tmp_path)]).exit_code == 0
