"""Hostile data, as a new user or an attacker hands it to the installed ``fedi2i`` command.

Every case runs the real command as a subprocess and checks what the user sees: exit code 3 (input
data) or 4 (run state), a message naming the file, patient or folder, and no traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fedi2i.data.phantom import make_phantom_head
from fedi2i.data.synthrad import write_patient
from tests.cli_harness import EXIT_DATA, EXIT_RUN_STATE, assert_clear_error, cli_env, run_cli

SHAPE = (16, 32, 32)
SPACING = (7.5, 7.5, 7.5)  # a 240 mm field of view


def _patient(root: Path, pid: str, seed: int = 0, fmt: str = "nii.gz") -> Path:
    mr, ct, mask = make_phantom_head(SHAPE, seed=seed)
    return write_patient(root, pid, mr, ct, mask, SPACING, fmt=fmt)


def _replace(path: Path, array: np.ndarray) -> None:
    """Overwrite an image's voxels, keeping its grid."""
    ref = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(array.astype(sitk.GetArrayViewFromImage(ref).dtype))
    out.CopyInformation(ref)
    sitk.WriteImage(out, str(path))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# Each case damages a dataset holding two good patients (1BA001, 1BB001) plus 1BA002, and returns
# (the folder to give `data inspect`, the names the message must contain).
def _voxels(name: str, values: Callable[[], np.ndarray], phrase: str) -> Callable[[Path], tuple[Path, list[str]]]:
    """A case that overwrites the voxels of 1BA002's image ``name``."""
    def case(root: Path) -> tuple[Path, list[str]]:
        _replace(_patient(root, "1BA002", 2) / name, values())
        return root, ["1BA002", name, phrase]
    return case


def _corner_mask() -> np.ndarray:
    mask = np.zeros(SHAPE)
    mask[:, :4, :4] = 1  # a corner of air
    return mask


def _nan_mri(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    img = nib.load(str(p / "mr.nii.gz"))
    arr = np.asarray(img.dataobj).copy()
    arr[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(p / "mr.nii.gz"))
    return root, ["1BA002", "mr.nii.gz", "non-finite"]


def _zero_byte_ct(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    (p / "ct.nii.gz").write_bytes(b"")
    return root, ["1BA002", "ct.nii.gz", "unreadable"]


def _mask_on_other_grid(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    img = sitk.ReadImage(str(p / "mask.nii.gz"))
    img.SetOrigin((12.0, 0.0, 0.0))
    sitk.WriteImage(img, str(p / "mask.nii.gz"))
    return root, ["1BA002", "mask.nii.gz", "does not match"]


def _mri_4d(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2, fmt="mha")
    four = sitk.JoinSeries([sitk.ReadImage(str(p / "mr.mha"))] * 2)
    sitk.WriteImage(four, str(p / "mr.mha"))
    return root, ["1BA002", "mr.mha", "dimensions"]


def _missing_ct(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    (p / "ct.nii.gz").unlink()
    return root, ["1BA002", "missing ct"]


def _wrong_file_names(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    for name in ("mr", "ct", "mask"):
        (p / f"{name}.nii.gz").rename(p / f"{name.upper()}_scan.nii.gz")
    return root, ["1BA002", "missing mr image", "mr.nii.gz"]


def _looping_patient_link(root: Path) -> tuple[Path, list[str]]:
    (root / "1BA002").symlink_to(root / "1BA002")
    return root, [str(root / "1BA002"), "loops"]


def _looping_file_link(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    (p / "mr.nii.gz").unlink()
    (p / "mr.nii.gz").symlink_to(p / "mr.nii.gz")
    return root, [str(p / "mr.nii.gz"), "loops"]


def _dangling_link(root: Path) -> tuple[Path, list[str]]:
    p = _patient(root, "1BA002", 2)
    (p / "ct.nii.gz").unlink()
    (p / "ct.nii.gz").symlink_to(root / "elsewhere" / "ct.nii.gz")
    return root, [str(p / "ct.nii.gz"), "does not exist"]


def _single_patient_folder(root: Path) -> tuple[Path, list[str]]:
    return root / "1BA001", [str(root / "1BA001"), "single patient folder"]


def _task_folder(root: Path) -> tuple[Path, list[str]]:
    task = root.parent / "Task1"
    (task / "brain").mkdir(parents=True)
    shutil.move(str(root / "1BA001"), str(task / "brain" / "1BA001"))
    return task, [str(task), str(task / "brain")]


def _not_synthrad(root: Path) -> tuple[Path, list[str]]:
    other = root.parent / "photos"
    (other / "holiday").mkdir(parents=True)
    (other / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8")
    return other, [str(other), "not a SynthRAD dataset"]


def _no_centre_in_id(root: Path) -> tuple[Path, list[str]]:
    _patient(root, "patient_7", 2)
    return root, ["patient_7", "cannot tell the centre"]


CASES: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "all-zero-mri": _voxels("mr.nii.gz", lambda: np.zeros(SHAPE), "all zero"),
    "constant-ct": _voxels("ct.nii.gz", lambda: np.full(SHAPE, 40), "constant"),
    "mask-misses-head": _voxels("mask.nii.gz", _corner_mask, "misses the head"),
    "empty-mask": _voxels("mask.nii.gz", lambda: np.zeros(SHAPE), "empty"), "nan-mri": _nan_mri, "zero-byte-ct": _zero_byte_ct,
    "mask-other-grid": _mask_on_other_grid, "4d-mri": _mri_4d, "missing-ct": _missing_ct,
    "wrong-file-names": _wrong_file_names,
    "looping-patient-link": _looping_patient_link, "looping-file-link": _looping_file_link,
    "dangling-link": _dangling_link, "single-patient-folder": _single_patient_folder,
    "task-folder": _task_folder, "not-synthrad": _not_synthrad, "no-centre-in-id": _no_centre_in_id,
}


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _patient(root, "1BA001", 0)
    _patient(root, "1BB001", 1)
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_data_inspect_names_what_is_wrong(dataset: Path, case: str) -> None:
    folder, names = CASES[case](dataset)
    result = run_cli("data", "inspect", folder)
    assert_clear_error(result, EXIT_DATA, *names)


def test_own_data_bad_patient_skip_bad_and_detected_centres(tmp_path: Path) -> None:
    """`train --data` on centres the config does not name, with one all-zero MRI.

    Without --skip-bad it stops (exit 3) naming the patient and file; with it, the patient is left out
    before the split and listed in metrics.json, the centres found are used (the last one unseen) and the
    command says so.
    """
    root = tmp_path / "data"
    for c, centre in enumerate("PQR"):
        for i in range(1, 4):
            _patient(root, f"1B{centre}00{i}", seed=10 * c + i)
    _replace(root / "1BQ002" / "mr.nii.gz", np.zeros(SHAPE))
    args = ["train", "-c", "tiny", "--data", root, "--rounds", "1", "-q"]
    stopped = run_cli(*args, "--out", tmp_path / "stopped", env=cli_env(tmp_path / "cache"))
    assert_clear_error(stopped, EXIT_DATA, "1BQ002", str(root / "1BQ002" / "mr.nii.gz"), "all zero")
    result = run_cli(*args, "--skip-bad", "--out", tmp_path / "run", env=cli_env(tmp_path / "cache"))
    assert result.code == 0, str(result)
    assert "using the centres found there: training P, Q, unseen R" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["data"]["skipped"]) == ["1BQ002"] and "all zero" in metrics["data"]["skipped"]["1BQ002"]
    assert metrics["data"]["patients"] == 8 and len(metrics["data"]["fingerprint"]) == 64
    assert set(metrics["unseen"]) == {"R"} and set(metrics["seen"]) <= {"P", "Q"}
    assert set(metrics["native_grid"]["unseen"]) == {"R"} and set(metrics["grids"]) == {"model_grid", "native_grid"}


def test_data_with_a_single_centre_is_named(tmp_path: Path) -> None:
    one = tmp_path / "one"
    _patient(one, "1BZ001")
    result = run_cli("train", "-c", "tiny", "--data", one, "--out", tmp_path / "run", env=cli_env(tmp_path / "cache"))
    assert_clear_error(result, EXIT_DATA, str(one), "only centre Z")


def test_predict_input_without_an_mri_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    result = run_cli("predict", "--model", model, tmp_path / "notes", "--out", tmp_path / "out")
    assert_clear_error(result, EXIT_DATA, str(tmp_path / "notes"), "holds no MRI")


def test_predict_refuses_a_planted_model(tmp_path: Path) -> None:
    """A run folder's model file that would run code when unpickled is refused (exit 4) and runs nothing."""

    class Plant:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(pickle.dumps({"weights": Plant()}))
    (run / "config.yaml").write_text("name: tiny\n")
    mri = _patient(tmp_path / "data", "1BA001") / "mr.nii.gz"
    result = run_cli("predict", "--run", run, mri, "--out", tmp_path / "sct.nii.gz")
    assert_clear_error(result, EXIT_RUN_STATE, str(run / "model.pt"))
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "sct.nii.gz").exists()


def test_head_fallback_is_cached_under_its_own_name_and_never_rebuilt(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without apt-get the head build falls back to the phantom: cached as the phantom, said so, reused the
    second time (not rebuilt), and a run's data records the phantom as its source."""
    cache = tmp_path / "cache"
    env = cli_env(cache, PATH=str(tmp_path / "no-tools"))
    args = ["data", "build", "--config", "tiny", "--source", "head", "--centres", "2", "--patients", "2"]
    first = run_cli(*args, env=env)
    assert first.code == 0 and "built the phantom dataset instead of head" in first.output, str(first)
    built = cache / "datasets" / "phantom-2x2-seed0"
    assert (built / ".complete").read_text() == "phantom"
    assert not (cache / "datasets" / "head-2x2-seed0" / ".complete").exists()
    stamps = {p: p.stat().st_mtime_ns for p in built.rglob("*.nii.gz")}
    second = run_cli(*args, env=env)
    assert second.code == 0 and "already complete, reused" in second.output, str(second)
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*.nii.gz")} == stamps

    from fedi2i.config import load_config
    from fedi2i.data.federation import load_federation

    monkeypatch.setenv("FEDI2I_CACHE", str(cache))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    cfg = load_config("tiny", {"data.source": "head", "data.n_centres": 2, "data.patients_per_centre": 2,
                               "data.train_centres": ["A"], "data.unseen_centres": ["B"],
                               "data.val_fraction": 0.0, "data.test_fraction": 0.0,
                               "attacks.poison.n_malicious": []})
    data = load_federation(cfg.data, cfg.seed, progress=False)
    summary = data.summary()
    assert data.root == built and summary["source"] == "phantom" and summary["fallback"] is True
