"""Gradient inversion attacks on federated MRI-to-CT updates: DLG, Inverting Gradients, and I2I.

What a curious server can rebuild of a centre's training images from the updates it records.

Public API (the audit calls these, not the CLI)::

    from fedi2i.attacks.inversion import (InversionSettings, InversionCell, plan_inversion,
                                          run_inversion_cell, run_inversion_grid, write_inversion_table)

    settings = InversionSettings.from_config(config)          # config.attacks["inversion"] + defaults
    cells = plan_inversion(settings)                          # list[InversionCell]
    result = run_inversion_cell(config, data, cells[0], out_dir, base_run_dir=None, settings=settings)
    # -> JSON-serialisable dict: key, method, batch, steps, stage, defence, noise_multiplier, round, client,
    #    target, mri_ssim, mri_psnr, ct_ssim, ct_psnr (whole-slice, after Hungarian matching), per_item, chance,
    #    anatomy (in-mask margins over other patients with 95% intervals, re-identification, "deciding"),
    #    objective_gap, budget_curve, prior, iterations, seconds, objective, figure, dp_epsilon_* for DP cells
    write_inversion_table(results, out_dir / "table.md")     # markdown + the verdict on the study's bound
    run_inversion_grid(config, data, out_dir, settings)       # every cell, results.json/csv + table.md

Lower level: ``observe(run_dir, round, client) -> Observation`` (what the server saw; no images),
``run_attack(observation, method, settings) -> Reconstruction`` (the attack reads the observation only),
``score(truth_mr, truth_ct, recon_mr, recon_ct)`` (whole-slice evaluation), ``assess(...)`` (in-mask anatomy,
objective gap, budget curve; with ``score`` the only readers of true images), ``read_cell(result)`` (what a
cell shows: leak, low, or search-limited, from its interval and gap).

Modules: settings (pydantic), observation (the attacker's view), prior (public slices the attacker may
hold), replay (differentiable local training), base (shared pieces), dlg / inverting_gradients / i2i (the
methods), methods (registry), matching (Hungarian + whole-slice SSIM/PSNR), anatomy (in-mask scores against
other patients, re-identification, clustered interval), gap (the objective gap), assess (one attack judged),
judge (its reading), victim (threat settings trained by the engine; DP-SGD via Opacus), run (plan, cells,
tables), figures.
"""

from fedi2i.attacks.inversion.base import Reconstruction
from fedi2i.attacks.inversion.matching import STUDY_SSIM_BOUND, chance_level, score
from fedi2i.attacks.inversion.methods import run_attack
from fedi2i.attacks.inversion.observation import Observation, observe, observe_view
from fedi2i.attacks.inversion.run import (InversionCell, plan_inversion, run_inversion_cell, run_inversion_grid,
                                          verdict, write_inversion_results, write_inversion_table)
from fedi2i.attacks.inversion.settings import InversionSettings

__all__ = [
    "InversionCell", "InversionSettings", "Observation", "Reconstruction", "STUDY_SSIM_BOUND", "chance_level",
    "observe", "observe_view", "plan_inversion", "run_attack", "run_inversion_cell", "run_inversion_grid",
    "score", "verdict", "write_inversion_results", "write_inversion_table",
]
