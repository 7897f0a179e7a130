"""The evaluation matrix: which runs to make (the plan) and how to make one (a cell).

A cell is one federated training run with some centres malicious, aggregated by one rule, watched by
the detector, then evaluated on every centre's test patients and on the unseen centre. Cells are
independent and each writes its result JSON atomically last, so an interrupted matrix resumes by
skipping the cells whose JSON exists and was made with the same settings (its fingerprint).

Replicates: the cells the verdicts read run again with other training seeds (``seeds``, ``replicate`` in
the settings). Replicate ``r`` of every cell trains with the same seed, ``replicate_seed(config.seed, r)``
(model initialisation, batch order, augmentation, update noise), and draws its data noise from
``replicate_seed(settings.seed, r)``; replicate 0 is the matrix's own run with the config's seeds. So the
clean and attacked runs of one seed differ by the attack alone, and they pair by seed. The test patients
are the same in every replicate (the data split is the audit's, not the seed's).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fedi2i.attacks.poisoning.attacks import attack_options, select_malicious
from fedi2i.attacks.poisoning.detector import UpdateDetector, weight_mask
from fedi2i.attacks.poisoning.settings import PoisonSettings, RuleParams, load_poison_settings
from fedi2i.attacks.poisoning.summary import majority_attack, stealth_attack
from fedi2i.config import Config, config_from_dict
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.errors import AggregationError, ConfigError
from fedi2i.fl.round_loop import RoundCallback, RoundEntry
from fedi2i.io import write_json
from fedi2i.fl.strategies import build_rule
from fedi2i.models import build_unet
from fedi2i.seeding import hash_seed
from fedi2i.training import RunOptions, train

METRICS = ("mae", "psnr", "ssim")
JUDGED_RULES = ("fedavg", "fedmedian")  # the rules the study's poisoning findings read
REPLICATE_STREAM = 7919  # keeps replicate seeds apart from every other seed derived from the same base


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate ``replicate``: the base seed itself for replicate 0, derived for the others."""
    return seed if replicate == 0 else hash_seed(seed, REPLICATE_STREAM, replicate)


@dataclass(frozen=True)
class PoisonCell:
    """One run of the matrix. ``attack == "none"`` (level "none", no malicious centre) is a baseline."""

    attack: str
    level: str
    n_malicious: int
    rule: str
    malicious: tuple[str, ...] = ()
    strength: dict[str, float] = field(default_factory=dict)
    federation: dict[str, Any] = field(default_factory=dict)  # config.federation keys of this rule
    tolerates: int = 0  # malicious centres the rule is proven to withstand with this many clients
    skip_reason: str | None = None
    replicate: int = 0  # 0: the matrix's own run; r > 0: the same cell with the seeds of replicate r
    seed: int | None = None  # training seed (config.seed for replicate 0); None: the config's
    attack_seed: int | None = None  # seed of the data noise; None: attacks.poison.seed

    @property
    def key(self) -> str:
        """Stable file-name-safe identifier, e.g. ``fedmedian__data_noise__high__m2`` (``...__r1`` for the
        first replicate with another seed)."""
        base = (f"{self.rule}__baseline" if self.attack == "none"
                else f"{self.rule}__{self.attack}__{self.level}__m{self.n_malicious}")
        return base if self.replicate == 0 else f"{base}__r{self.replicate}"

    @property
    def config_key(self) -> tuple[str, str, str, int]:
        """What the cell runs, whatever its seed: (rule, attack, level, n_malicious)."""
        return self.rule, self.attack, self.level, self.n_malicious

    @property
    def is_baseline(self) -> bool:
        return self.attack == "none"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "malicious": list(self.malicious), "key": self.key}


def resolve_rule(rule: str, n_clients: int, params: RuleParams) -> tuple[dict[str, Any], int, str | None]:
    """Federation settings for ``rule`` with ``n_clients`` per round, the number of malicious centres it
    tolerates in theory, and why it cannot run (None if it can).

    ``auto`` f is the largest the rule admits (Krum n >= 2f+3, Bulyan n >= 4f+3). Bulyan with f = 0 keeps
    every update and is the plain unweighted mean, so it is skipped rather than reported as Bulyan.
    """
    fed: dict[str, Any] = {"strategy": rule}
    tolerates = 0
    if rule == "fedmedian":
        tolerates = (n_clients - 1) // 2
    elif rule == "trimmed":
        fed["trimmed_beta"] = params.trimmed_beta
        tolerates = int(params.trimmed_beta * n_clients)
    elif rule in ("krum", "multikrum"):
        f = max((n_clients - 3) // 2, 0) if params.krum_f == "auto" else params.krum_f
        fed.update(krum_f=f, multikrum_m=params.multikrum_m)
        tolerates = f
    elif rule == "bulyan":
        f = (n_clients - 3) // 4 if params.bulyan_f == "auto" else params.bulyan_f
        if f <= 0:
            return fed | {"bulyan_f": max(f, 0)}, 0, (
                f"Bulyan needs n >= 4f+3 = 7 clients for f=1; with {n_clients} clients only f=0 fits, and "
                "Bulyan with f=0 keeps every update (the unweighted mean), so it would not test Bulyan")
        fed["bulyan_f"] = f
        tolerates = f
    try:
        build_rule(rule, trimmed_beta=fed.get("trimmed_beta", 0.2), krum_f=fed.get("krum_f", 1),
                   multikrum_m=fed.get("multikrum_m"), bulyan_f=fed.get("bulyan_f", 1)).check(n_clients)
    except ConfigError as exc:
        return fed, tolerates, str(exc)
    return fed, tolerates, None


def training_sizes(config: Config, data: FederatedData | None) -> dict[str, int]:
    data = data or load_federation(config.data, config.seed, progress=False)
    return {c: len(data.train[c]) for c in config.data.train_centres}


def clients_per_round(config: Config) -> int:
    """Training centres that send an update each round (all of them unless the config samples fewer)."""
    n_train = len(config.data.train_centres)
    return min(config.federation.clients_per_round or n_train, n_train)


def deciding_cells(settings: PoisonSettings, per_round: int) -> set[tuple[str, str, str, int]]:
    """(rule, attack, level, n_malicious) of the attacked cells the study's verdicts read, for FedAvg and
    FedMedian: every attack at its highest level with each malicious minority ("FedAvg inoperative",
    "FedMedian restores"; a majority attack voids the median's guarantee and judges nothing), and the
    stealth attack at its lowest level with the fewest malicious centres ("low noise is stealthy": the
    detector's margin there)."""
    minority = [n for n in sorted(settings.n_malicious) if not majority_attack(n, per_round)]
    out: set[tuple[str, str, str, int]] = set()
    for rule in (r for r in settings.rules if r in JUDGED_RULES):
        out |= {(rule, attack, settings.levels[-1], n) for attack in settings.attacks for n in minority}
        if minority:
            out.add((rule, stealth_attack(settings.attacks), settings.levels[0], minority[0]))
    return out


def replicated(cells: list[PoisonCell], settings: PoisonSettings, per_round: int) -> list[PoisonCell]:
    """The cells of replicate 0 that run again with other seeds: all of them, or the deciding ones with
    their rules' baselines (their clean pairs); never a cell its rule cannot run."""
    if settings.seeds <= 1:
        return []
    if settings.replicate == "all":
        return [c for c in cells if c.skip_reason is None]
    chosen = deciding_cells(settings, per_round)
    rules = {c.rule for c in cells if c.config_key in chosen}
    return [c for c in cells if c.skip_reason is None and (c.config_key in chosen or (c.is_baseline and c.rule in rules))]


def plan_poison(config: Config, settings: PoisonSettings | None = None,
                data: FederatedData | None = None) -> list[PoisonCell]:
    """Every cell of the matrix in run order: per rule, its baseline, then attack x level x n_malicious; then
    the replicates with the other seeds (``replicated``), one seed after the other.

    ``data`` is only needed (and loaded from the config when missing) to rank centres by size for
    ``malicious: largest|smallest``. Cells a rule cannot run carry a ``skip_reason`` instead of failing.
    """
    settings = settings or load_poison_settings(config)
    per_round = clients_per_round(config)
    if isinstance(settings.malicious, str):
        sizes = training_sizes(config, data)
    else:
        sizes = {c: 0 for c in config.data.train_centres}
    chosen = {n: tuple(select_malicious(settings.malicious, n, sizes)) for n in settings.n_malicious}
    cells: list[PoisonCell] = []
    for rule in settings.rules:
        fed, tolerates, skip = resolve_rule(rule, per_round, settings.rule_params)
        if settings.baseline:
            cells.append(PoisonCell("none", "none", 0, rule, (), {}, fed, tolerates, skip))
        for attack in settings.attacks:
            for level in settings.levels:
                for n in settings.n_malicious:
                    cells.append(PoisonCell(attack, level, n, rule, chosen[n], settings.strength(attack, level),
                                            fed, tolerates, skip))
    cells = [replace(c, seed=config.seed, attack_seed=settings.seed) for c in cells]
    again = replicated(cells, settings, per_round)
    for r in range(1, settings.seeds):
        cells += [replace(c, replicate=r, seed=replicate_seed(config.seed, r),
                          attack_seed=replicate_seed(settings.seed, r)) for c in again]
    return cells


def cell_config(config: Config, settings: PoisonSettings, cell: PoisonCell) -> Config:
    """The config of a cell's run: its rule, the matrix's shorter training, no record, no SecAgg.

    SecAgg is off because robust rules and the detector both need the individual updates.
    """
    raw = config.model_dump(mode="json")
    raw["name"] = f"{config.name}-poison-{cell.key}"
    if cell.seed is not None:
        raw["seed"] = cell.seed
    raw["federation"].update(cell.federation)
    raw["federation"]["record_rounds"] = "none"
    raw["secagg"]["enabled"] = False
    if settings.rounds is not None:
        raw["train"]["rounds"] = settings.rounds
    if settings.local_steps is not None:
        raw["train"]["local_steps"] = settings.local_steps
    if settings.eval_every is not None:
        raw["federation"]["eval_every"] = settings.eval_every
    return config_from_dict(raw, source=f"poisoning cell {cell.key}")


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats (a diverged model) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _mean_metrics(summaries: list[dict[str, float]]) -> dict[str, float]:
    return {m: float(sum(s[m] for s in summaries) / len(summaries)) for m in METRICS} if summaries else {}


def cell_dir(out_dir: Path, cell: PoisonCell) -> Path:
    return Path(out_dir) / "cells" / cell.key


def cell_result_path(out_dir: Path, cell: PoisonCell) -> Path:
    return Path(out_dir) / "cells" / f"{cell.key}.json"


def run_poison_cell(config: Config, data: FederatedData, cell: PoisonCell, out_dir: Path,
                    settings: PoisonSettings | None = None, on_round: RoundCallback | None = None) -> dict[str, Any]:
    """Train one cell, score it, and write ``cells/<key>.json`` (returned as a dict).

    The dict holds the unseen-centre and per-centre MAE/PSNR/SSIM (honest and malicious centres apart),
    the validation curve, the detector's verdicts and per-round running scores, and file paths.
    """
    settings = settings or load_poison_settings(config)
    out_dir = Path(out_dir)
    result: dict[str, Any] = {**cell.as_dict(), "status": "skipped" if cell.skip_reason else "done",
                              "n_clients": clients_per_round(config),
                              "fingerprint": cell_fingerprint(config, settings, cell)}
    if cell.skip_reason is None:
        result.update(_train_cell(config, data, cell, out_dir, settings, on_round))
    result = _finite(result)
    path = cell_result_path(out_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def _train_cell(config: Config, data: FederatedData, cell: PoisonCell, out_dir: Path,
                settings: PoisonSettings, on_round: RoundCallback | None) -> dict[str, Any]:
    cfg = cell_config(config, settings, cell)
    attack_seed = settings.seed if cell.attack_seed is None else cell.attack_seed
    data_t, update_t = attack_options(cell.attack, cell.strength, cell.malicious, attack_seed, settings.clip_ct)
    mask = weight_mask(build_unet(cfg.model)) if settings.detector.weights_only else None
    detector = UpdateDetector(settings.detector, include=mask)
    run_dir = cell_dir(out_dir, cell)
    history: list[RoundEntry] = []

    def record(done: int, entry: RoundEntry) -> None:
        history.append(entry)
        if on_round is not None:
            on_round(done, entry)

    start = time.perf_counter()
    try:
        res = train(cfg, run_dir, data, RunOptions(data_transforms=data_t, update_transforms=update_t,
                                                   monitors=[detector], resume=False, on_round=record,
                                                   native_eval=False, figures=False))
    except AggregationError as exc:
        # Too few usable (finite) updates in a round: the federation stopped working, which is the outcome
        # the attack aimed for, not an error of the experiment.
        write_json(run_dir / "detector.json", detector.history)
        rows = [e.to_dict() for e in history]
        write_json(run_dir / "history.json", rows)
        return {"collapsed": True, "collapsed_round": len(history), "collapse_reason": str(exc),
                "diverged": True, "unseen": {}, "unseen_mean": {}, "honest": {}, "honest_mean": {},
                "malicious_centres": {}, "val_curve": _val_curve(rows, cell, config),
                "detector": detector.summary(), "rounds": cfg.train.rounds,
                "seconds": time.perf_counter() - start, "run_dir": str(run_dir),
                "history_path": str(run_dir / "history.json"), "detector_path": str(run_dir / "detector.json")}
    seconds = time.perf_counter() - start
    write_json(run_dir / "detector.json", detector.history)
    test = {c: r["summary"] for c, r in res.metrics["test"].items()}
    honest = [c for c in config.data.train_centres if c not in cell.malicious and c in test]
    unseen = [c for c in config.data.unseen_centres if c in test]
    pick = lambda s: {m: s[m] for m in METRICS}  # noqa: E731
    unseen_mean = _mean_metrics([test[c] for c in unseen])
    return {
        "unseen": {c: pick(test[c]) for c in unseen},
        "unseen_mean": unseen_mean,
        "honest": {c: pick(test[c]) for c in honest},
        "honest_mean": _mean_metrics([test[c] for c in honest]),
        "malicious_centres": {c: pick(test[c]) for c in cell.malicious if c in test},
        "collapsed": False,
        "diverged": not all(math.isfinite(v) for v in unseen_mean.values()),
        "val_curve": _val_curve(res.run.history, cell, config),
        "detector": detector.summary(),
        "rounds": cfg.train.rounds,
        "train_slices": res.metrics["train_slices"],
        "seconds": seconds,
        "run_dir": str(run_dir),
        "history_path": str(run_dir / "history.json"),
        "detector_path": str(run_dir / "detector.json"),
    }


def cell_fingerprint(config: Config, settings: PoisonSettings, cell: PoisonCell) -> str:
    """Hash of everything that determines a cell's numbers, so a changed setting reruns the cell."""
    cfg = cell_config(config, settings, cell).model_dump(mode="json")
    for unused in ("name", "attacks", "secagg"):  # SecAgg is always off in a cell
        cfg.pop(unused, None)
    if not cfg["dp"]["enabled"]:
        cfg["dp"] = {"enabled": False}
    described = cell.as_dict()
    if cell.replicate == 0:  # the matrix's own run keeps the fingerprint it had before seeds were replicated
        for key in ("replicate", "seed", "attack_seed"):
            described.pop(key)
    attack_seed = settings.seed if cell.attack_seed is None else cell.attack_seed
    payload = {"cell": described, "config": cfg, "seed": attack_seed, "clip_ct": settings.clip_ct,
               "detector": settings.detector.model_dump()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _val_curve(history: list[dict[str, Any]], cell: PoisonCell, config: Config) -> list[dict[str, Any]]:
    """Validation MAE per centre at every evaluated round, and its mean over the honest centres."""
    honest = [c for c in config.data.train_centres if c not in cell.malicious]
    curve = []
    for entry in history:
        if "val" in entry:
            maes = {c: v["mae"] for c, v in entry["val"].items()}
            hon = [maes[c] for c in honest if c in maes]
            curve.append({"round": entry["round"] + 1, "honest_mae": sum(hon) / len(hon) if hon else None,
                          "mae": maes})
    return curve


def load_cell_result(out_dir: Path, cell: PoisonCell, fingerprint: str | None = None) -> dict[str, Any] | None:
    """A finished cell's result, or None when it has not run, its JSON is unreadable, or it was made
    with other settings (its fingerprint differs)."""
    path = cell_result_path(out_dir, cell)
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if fingerprint is not None and result.get("fingerprint") != fingerprint:
        return None
    return result


def run_poison_matrix(config: Config, data: FederatedData, out_dir: Path, settings: PoisonSettings | None = None,
                      cells: list[PoisonCell] | None = None,
                      on_cell: Callable[[PoisonCell, dict[str, Any], bool], None] | None = None,
                      on_round: RoundCallback | None = None) -> list[dict[str, Any]]:
    """Run every cell not already finished in ``out_dir``; ``on_cell(cell, result, reused)`` after each."""
    settings = settings or load_poison_settings(config)
    cells = cells if cells is not None else plan_poison(config, settings, data)
    results = []
    for cell in cells:
        done = load_cell_result(out_dir, cell, cell_fingerprint(config, settings, cell))
        reused = done is not None
        result = done if reused else run_poison_cell(config, data, cell, out_dir, settings, on_round)
        results.append(result)
        if on_cell is not None:
            on_cell(cell, result, reused)
    return results
