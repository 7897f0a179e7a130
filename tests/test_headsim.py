"""Realistic paired heads: plausible HU and T1 contrast, SynthRAD layout, seeding, heterogeneity.

The tests use a cache folder of their own. The head sources (and the template built from them) already in
the user's cache are linked into it and only read; anything written, a fetch or a rebuilt template, lands
in the tests' folder. Where apt cannot fetch the sources the data tests are skipped (the procedural
phantom covers those environments).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedi2i.data import headsim_sources
from fedi2i.data.cache import cache_dir
from fedi2i.data.headsim import (
    TEMPLATE_VERSION,
    HeadSourcesUnavailable,
    HeadTemplate,
    Scanner,
    build_head_dataset,
    fetch_head_sources,
    load_head_template,
    simulate_patient,
)
from fedi2i.data.synthrad import PatientVolumes, load_patient, scan_dataset
from fedi2i.errors import ConfigError, DataError

SPACING = (3.0, 3.75, 3.75)
IN_PLANE = 64


@pytest.fixture(scope="module", autouse=True)
def test_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``FEDI2I_CACHE`` pointed at a folder of the tests' own, with the user's fetched items linked in.

    A link is only read: a rebuilt template replaces the link (an atomic rename), never the user's file.
    """
    user = cache_dir()
    cache = tmp_path_factory.mktemp("cache")
    for name in ("sources", f"headsim_template_v{TEMPLATE_VERSION}.npz"):
        if (user / name).exists():
            (cache / name).symlink_to(user / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDI2I_CACHE", str(cache))
        yield cache


def test_the_tests_write_to_their_own_cache(test_cache: Path) -> None:
    assert cache_dir() == test_cache and str(test_cache).startswith(tempfile.gettempdir())


@pytest.fixture(scope="module")
def template() -> HeadTemplate:
    try:
        fetch_head_sources()
    except HeadSourcesUnavailable as exc:
        pytest.skip(f"real head sources unavailable: {exc}")
    return load_head_template()


@pytest.fixture(scope="module")
def patients(template: HeadTemplate, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PatientVolumes]:
    root = tmp_path_factory.mktemp("heads")
    ids = build_head_dataset(root, n_centres=2, patients_per_centre=2, seed=0, spacing=SPACING,
                             in_plane=IN_PLANE, progress=False, workers=2)
    assert ids == ["1BA001", "1BA002", "1BB001", "1BB002"]
    return {r.pid: load_patient(r) for r in scan_dataset(root)}


def _brain(p: PatientVolumes) -> np.ndarray:
    """Soft-tissue HU in the upper middle of the head: brain, well away from the scalp."""
    region = np.zeros(p.ct.shape, bool)
    nz, ny, nx = p.ct.shape
    region[nz // 2: 3 * nz // 4, ny // 3: 2 * ny // 3, nx // 3: 2 * nx // 3] = True
    return region & (p.ct > 0) & (p.ct < 80)


def test_template_pairs_the_colin_brain_with_the_ct_skull(template: HeadTemplate) -> None:
    assert template.dice > 0.85
    assert template.ct.shape == template.t1.shape == template.s_cav.shape == template.d_bone.shape
    ct, spacing = headsim_sources.read_cranium_ct(fetch_head_sources())
    assert ct.shape == (108, 256, 256) and spacing[0] == pytest.approx(1.5)
    assert spacing[1] == pytest.approx(0.957, abs=1e-3)


def test_patients_do_not_depend_on_the_number_of_build_processes(
        patients: dict[str, PatientVolumes], tmp_path: Path) -> None:
    # the fixture built its patients in a process pool; one process must write the same volumes
    build_head_dataset(tmp_path, n_centres=2, patients_per_centre=1, seed=0, spacing=SPACING, in_plane=IN_PLANE,
                       progress=False, workers=1)
    serial = {r.pid: load_patient(r) for r in scan_dataset(tmp_path)}
    assert sorted(serial) == ["1BA001", "1BB001"]
    for pid, p in serial.items():
        for name in ("mr", "ct", "mask"):
            np.testing.assert_array_equal(getattr(p, name), getattr(patients[pid], name), err_msg=f"{pid} {name}")


def test_volumes_are_paired_on_the_requested_grid(patients: dict[str, PatientVolumes]) -> None:
    for p in patients.values():
        assert p.mr.shape == p.ct.shape == p.mask.shape
        assert p.ct.shape[1:] == (IN_PLANE, IN_PLANE) and p.ct.shape[0] > 30
        assert p.spacing == pytest.approx(SPACING)


def test_ct_has_bone_and_air(patients: dict[str, PatientVolumes]) -> None:
    for p in patients.values():
        assert p.ct.min() >= -1024 and p.ct.max() <= 3071
        assert (p.ct > 700).sum() > 500, "skull bone above 700 HU"
        assert abs(np.median(p.ct[p.mask == 0]) + 1000) < 30, "air around the head at -1000 HU"
        assert 20 < np.median(p.ct[_brain(p)]) < 50, "brain HU"


def test_mri_bone_and_air_darker_than_brain(patients: dict[str, PatientVolumes]) -> None:
    for p in patients.values():
        brain = np.median(p.mr[_brain(p)])
        bone = np.median(p.mr[(p.ct > 700) & (p.mask > 0)])
        air = np.median(p.mr[p.mask == 0])
        assert bone < 0.5 * brain and air < 0.15 * brain


def test_mask_covers_the_head(patients: dict[str, PatientVolumes]) -> None:
    for p in patients.values():
        head = p.ct > -200
        assert p.mask[head].mean() > 0.999
        assert 0.2 < p.mask.mean() < 0.9


def test_same_seed_gives_identical_volumes(template: HeadTemplate,
                                           patients: dict[str, PatientVolumes]) -> None:
    first = simulate_patient(template, 1, 0, seed=0, spacing=SPACING, in_plane=IN_PLANE)
    again = simulate_patient(template, 1, 0, seed=0, spacing=SPACING, in_plane=IN_PLANE)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], patients["1BB001"].mr)  # the written file, too
    other = simulate_patient(template, 1, 0, seed=1, spacing=SPACING, in_plane=IN_PLANE)
    assert not np.array_equal(first[1], other[1])


def test_centres_differ_in_mri_intensities(patients: dict[str, PatientVolumes]) -> None:
    a, b = Scanner.for_centre(0, 0), Scanner.for_centre(1, 0)
    assert a != b
    brain = {pid: np.median(p.mr[_brain(p)]) for pid, p in patients.items()}
    within = abs(np.log(brain["1BA001"] / brain["1BA002"]))
    between = abs(np.log(brain["1BA001"] / brain["1BB001"]))
    assert between > 0.2 and between > 3 * within


def test_patients_differ_in_anatomy(patients: dict[str, PatientVolumes]) -> None:
    a, b = patients["1BA001"], patients["1BA002"]
    head_a, head_b = a.ct > -500, b.ct > -500
    dice = 2 * (head_a & head_b).sum() / (head_a.sum() + head_b.sum())
    assert dice < 0.97
    bone_a, bone_b = a.ct > 700, b.ct > 700
    assert 2 * (bone_a & bone_b).sum() / (bone_a.sum() + bone_b.sum()) < 0.8


def test_missing_apt_raises_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headsim_sources.shutil, "which", lambda name: None)
    with pytest.raises(HeadSourcesUnavailable, match="apt-get is not available") as info:
        fetch_head_sources(tmp_path)
    assert isinstance(info.value, DataError)


def test_invalid_arguments_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_head_dataset(tmp_path, n_centres=0, cache_dir=tmp_path / "nothing")
    with pytest.raises(ConfigError):
        build_head_dataset(tmp_path, in_plane=8, cache_dir=tmp_path / "nothing")
