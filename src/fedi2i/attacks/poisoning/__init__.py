"""Poisoning by malicious centres, robust aggregation, and a server-side detector of poisoned updates.

Public API (what the audit calls)::

    settings = load_poison_settings(config)                # PoisonSettings from config.attacks["poison"]
    cells = plan_poison(config, settings, data)             # list[PoisonCell]: attack, level, n_malicious,
                                                            # rule, malicious ids, strength, key, skip_reason
    result = run_poison_cell(config, data, cell, out_dir)   # JSON-serialisable dict, also cells/<key>.json
    results = run_poison_matrix(config, data, out_dir)      # every cell, finished ones reused
    report = summarise_poison(results, out_dir)             # tables (JSON/CSV/markdown) and figures

Building blocks: ``noisy_slices`` / ``data_noise_transform`` / ``update_transform`` (the attacks, plugged
into ``RunOptions``), ``UpdateDetector`` (a ``RoundMonitor``), ``detection_table`` (ROC per level).
"""

from fedi2i.attacks.poisoning.attacks import (attack_options, data_noise_transform, noisy_slices,
                                              select_malicious, update_transform)
from fedi2i.attacks.poisoning.detector import UpdateDetector, round_scores, update_features
from fedi2i.attacks.poisoning.matrix import (PoisonCell, cell_config, load_cell_result, plan_poison,
                                             run_poison_cell, run_poison_matrix)
from fedi2i.attacks.poisoning.settings import DetectorSettings, PoisonSettings, load_poison_settings
from fedi2i.attacks.poisoning.summary import detection_table, summarise_poison

__all__ = [
    "DetectorSettings", "PoisonCell", "PoisonSettings", "UpdateDetector", "attack_options", "cell_config",
    "data_noise_transform", "detection_table", "load_cell_result", "load_poison_settings", "noisy_slices",
    "plan_poison", "round_scores", "run_poison_cell", "run_poison_matrix", "select_malicious",
    "summarise_poison", "update_features", "update_transform",
]
