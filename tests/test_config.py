"""Configs: presets load, unknown keys and impossible settings are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedi2i.config import config_from_dict, load_config
from fedi2i.errors import ConfigError


@pytest.mark.parametrize("preset", ["quick", "paper", "tiny"])
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
