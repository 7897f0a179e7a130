"""``fedi2i predict``: a trained model's sCT for a new patient, written on that patient's MRI grid.

A tiny run is trained in-process; the installed command then translates a flipped, anisotropic MRI
(and a folder of patients). The sCT must sit on the MRI's grid exactly (shape, affine, direction, as
nibabel and SimpleITK read them) and score against the CT what the native-grid evaluation scores.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fedi2i.config import load_config
from fedi2i.data.phantom import build_phantom_dataset
from fedi2i.data.synthrad import load_patient, scan_dataset, write_patient
from fedi2i.evaluate import evaluate_native
from fedi2i.inference import MODEL_FILE, load_run_model
from fedi2i.metrics import image_metrics
from fedi2i.training import train
from tests.cli_harness import run_cli
from tests.volumes import write_regridded


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder of a finished 1-round tiny run, its data folder)."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    build_phantom_dataset(data, n_centres=3, patients_per_centre=3, seed=0, shape=(20, 40, 40))
    cfg = load_config("tiny", {"data.root": str(data), "data.train_centres": ["A", "B"],
                               "data.unseen_centres": ["C"], "train.rounds": 1})
    train(cfg, root / "run")
    return root / "run", data


def _flipped_anisotropic(source: Path, target: Path, pid: str) -> Path:
    """The patient of ``source`` on a grid with x and y flipped (RAS) and 4 x 4 x 9 mm voxels, uint16 MRI."""
    vol = load_patient(next(r for r in scan_dataset(source) if r.pid == pid))
    images = {m: vol.image(m) for m in ("mr", "ct", "mask")}
    return write_regridded(target, "1BC099", images, (4.0, 4.0, 9.0), np.diag([-1.0, -1.0, 1.0]),
                           mr_dtype=np.uint16)


def test_predict_writes_on_the_mri_grid_and_scores_as_the_native_evaluation(
        trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    assert (run / MODEL_FILE).is_file()
    patient = _flipped_anisotropic(data, tmp_path / "new", "1BC001")
    out = tmp_path / "sct.nii.gz"
    result = run_cli("predict", "--run", run, patient / "mr.nii.gz", "--mask", patient / "mask.nii.gz",
                     "--out", out)
    assert result.code == 0, str(result)
    assert str(out) in result.output and "Traceback" not in result.output

    mr_nib, sct_nib = nib.load(str(patient / "mr.nii.gz")), nib.load(str(out))
    assert sct_nib.shape == mr_nib.shape and sct_nib.get_data_dtype() == np.int16
    np.testing.assert_allclose(sct_nib.affine, mr_nib.affine, atol=1e-5)
    mr_itk, sct_itk = sitk.ReadImage(str(patient / "mr.nii.gz")), sitk.ReadImage(str(out))
    assert sct_itk.GetSize() == mr_itk.GetSize()
    np.testing.assert_allclose(sct_itk.GetDirection(), mr_itk.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(sct_itk.GetOrigin(), mr_itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sct_itk.GetSpacing(), mr_itk.GetSpacing(), atol=1e-6)
    assert np.allclose(mr_itk.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))  # the flip survived the round trip

    record = next(iter(scan_dataset(patient.parent)))
    vol = load_patient(record)
    sct = sitk.GetArrayFromImage(sct_itk).astype(np.float64)
    written = image_metrics(vol.ct, sct, vol.mask)
    model = load_run_model(run)
    native = evaluate_native(model.model, [record], model.grid, model.percentiles)["1BC099"]
    assert written["mae"] == pytest.approx(native["mae"], abs=0.5)  # int16 rounding moves a voxel <= 0.5 HU
    assert written["psnr"] == pytest.approx(native["psnr"], rel=1e-3)
    assert written["ssim"] == pytest.approx(native["ssim"], abs=1e-3)
    assert vol.ct[vol.mask > 0].std() > 100 and written["mae"] < vol.ct[vol.mask > 0].std() * 3


def test_predict_a_folder_of_patients_with_the_model_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    folder = tmp_path / "patients"
    for pid, fmt in (("1BC002", "nii.gz"), ("1BC003", "mha")):
        vol = load_patient(next(r for r in scan_dataset(data) if r.pid == pid))
        write_patient(folder, pid, vol.mr, vol.ct, vol.mask, vol.spacing, fmt=fmt)
    result = run_cli("predict", "--model", run / MODEL_FILE, folder, "--out", tmp_path / "out", "--masked")
    assert result.code == 0, str(result)
    for pid, name in (("1BC002", "sct.nii.gz"), ("1BC003", "sct.mha")):
        written = tmp_path / "out" / pid / name
        assert pid in result.output and written.is_file()
        sct = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / pid / f"mask.{name.split('.', 1)[1]}")))
        assert sct.dtype == np.int16 and sct.shape == mask.shape
        assert (sct[mask == 0] == -1024).all() and sct[mask > 0].std() > 50  # --masked; anatomy inside
