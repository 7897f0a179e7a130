"""Configs: presets load, unknown keys and impossible settings are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedi2i.config import config_from_dict, load_config
from fedi2i.errors import ConfigError


@pytest.mark.parametrize("preset", ["quick", "reference", "paper", "tiny"])
def test_presets_validate(preset: str) -> None:
    cfg = load_config(preset)
    assert cfg.name == preset and cfg.seed == 0
    assert set(cfg.data.train_centres).isdisjoint(cfg.data.unseen_centres)


def test_paper_preset_is_paper_sized() -> None:
    cfg = load_config("paper")
    assert cfg.data.image_size == 256 and len(cfg.model.channels) == 5


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate: unknown key"):
        load_config(path)


def test_bad_values_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="federation.strategy"):
        config_from_dict({"federation": {"strategy": "fedmean"}})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nonexistent")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_secagg_with_robust_rule_is_refused_with_reason() -> None:
    with pytest.raises(ConfigError, match="need every individual update"):
        config_from_dict({"secagg": {"enabled": True}, "federation": {"strategy": "fedmedian"}})
    assert config_from_dict({"secagg": {"enabled": True}, "federation": {"strategy": "fedprox"}}).secagg.enabled


def test_overrides_apply() -> None:
    cfg = load_config("tiny", {"train.rounds": 7, "federation.strategy": "krum"})
    assert cfg.train.rounds == 7 and cfg.federation.strategy == "krum"


@pytest.mark.parametrize("raw,key", [
    ({"train": {"rounds": 0}}, "train.rounds"),
    ({"data": {"image_size": 36}, "model": {"channels": [8, 16, 32, 64]}}, "data.image_size"),
    ({"data": {"train_centres": ["A", "B"], "unseen_centres": ["B"]}}, "data.unseen_centres"),
    ({"train": {"rounds": 3}, "federation": {"record_rounds": [0, 3]}}, "federation.record_rounds"),
    ({"attacks": {"membrship": {}}}, "attacks.membrship"),
    ({"data": {"train_centres": ["A", "B"], "unseen_centres": ["C"]}, "attacks": {"poison": {"n_malicious": [2]}}},
     "attacks.poison.n_malicious"),
])
def test_cross_field_bounds_name_their_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(raw)


def test_attacks_section_reads_like_a_mapping() -> None:
    cfg = load_config("tiny")
    assert cfg.attacks.get("inversion")["methods"] == ["dlg", "i2i"]
    assert "membership" in cfg.attacks and "audit" not in cfg.attacks
    assert cfg.attacks.get("audit", {"x": 1}) == {"x": 1} and cfg.attacks["audit"] == {}


def test_result_fields_leave_out_what_does_not_change_results() -> None:
    from fedi2i.config import result_fields

    base = load_config("tiny")
    moved = load_config("tiny", {"name": "other", "train.threads": 2, "data.root": "/elsewhere",
                                 "attacks.membership.bootstrap": 5})
    assert result_fields(moved) == result_fields(base)
    changed = load_config("tiny", {"federation.strategy": "fedmedian"})
    diff = {k for k, v in result_fields(changed).items() if result_fields(base)[k] != v}
    assert diff == {"federation.strategy"}


def test_config_that_is_a_folder_or_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "c.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(folder)
    latin = tmp_path / "l.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
