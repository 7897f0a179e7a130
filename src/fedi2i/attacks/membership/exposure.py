"""Membership exposure round by round: when does a federation become leaky?

At each recorded round t the same-centre AUC (members against held-out patients of their own centre, the
membership signal without the centre confound) of two attacks, as a mean over the target centres with a
stratified, patient-clustered 95% interval:

- ``fedmia-loss``: FedMIA-I on round t alone (the target's model ``global_t + delta_k`` against the other
  centres' models); it needs the individual updates, so secure aggregation removes it;
- ``loss-global``: the loss threshold on the global model round t produces (``global_t + aggregate_t``),
  the model every centre receives, which secure aggregation does not hide.

The signals are the recorded rounds' per-slice losses; rounds the attack itself already scored are reused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedi2i.attacks.membership.baselines import phi
from fedi2i.attacks.membership.candidates import Candidates
from fedi2i.attacks.membership.collect import Progress, Signals, collect_signals
from fedi2i.attacks.membership.evaluation import mean_auc, same_centre
from fedi2i.attacks.membership.fedmia import fedmia_scores
from fedi2i.attacks.membership.settings import MembershipSettings, SignalUnavailable
from fedi2i.errors import RecordError
from fedi2i.fl.observer import ServerRecord

CURVE_METHODS = ("fedmia-loss", "loss-global")
CURVE_FAMILIES = frozenset({"loss_target", "loss_aggregate"})


def curve_signals(record: ServerRecord, rounds: list[int], clients: list[str], cands: Candidates, have: Signals,
                  batch_size: int = 64, progress: Progress | None = None) -> Signals:
    """Per-slice losses [R, K, N] and [R, N] of ``rounds``, taking the rows ``have`` holds, computing the rest."""
    missing = [r for r in rounds if r not in have.rounds]
    extra = collect_signals(record, missing, clients, cands, set(CURVE_FAMILIES), batch_size,
                            progress=progress) if missing else None

    def row(name: str, r: int) -> np.ndarray:
        source = have if r in have.rounds else extra
        assert source is not None
        array = getattr(source, name)
        if array is None:
            raise RecordError(f"the {name} signal of round {r} was not collected")
        return array[source.rounds.index(r)]

    return Signals(rounds=list(rounds), clients=list(clients), secure=have.secure,
                   loss_target=np.stack([row("loss_target", r) for r in rounds]),
                   loss_aggregate=np.stack([row("loss_aggregate", r) for r in rounds]))


def _round_scores(sig: Signals, ri: int, k: int, evaluated: np.ndarray, s: MembershipSettings
                  ) -> dict[str, np.ndarray]:
    """Scores [N] of each curve attack at round index ``ri`` for target column ``k`` (FedMIA only without SecAgg)."""
    assert sig.loss_target is not None and sig.loss_aggregate is not None
    out = {"loss-global": phi(sig.loss_aggregate[ri], s.log_loss)}
    if not sig.secure:
        try:
            out["fedmia-loss"] = fedmia_scores(phi(sig.loss_target[ri:ri + 1], s.log_loss), k, evaluated,
                                               s.sigma, s.sigma_floor)[0]
        except SignalUnavailable:  # the target sat this round out
            pass
    return out


def round_exposure(sig: Signals, cands: Candidates, clients: list[str], s: MembershipSettings) -> dict[str, Any]:
    """The curve: ``rounds`` and, per attack, one point per round (``round``, ``auc``, ``ci95``, ``centres``).

    ``sig.rounds`` must be strictly increasing: a curve whose rounds are out of order, or repeated, is
    refused rather than drawn.
    """
    if any(b <= a for a, b in zip(sig.rounds, sig.rounds[1:])):
        raise RecordError(f"exposure rounds must be strictly increasing, got {sig.rounds}")
    methods = CURVE_METHODS[1:] if sig.secure else CURVE_METHODS
    curves: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    labels = {c: cands.labels_for(c) for c in clients}
    for ri, r in enumerate(sig.rounds):
        blocks: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {m: {} for m in methods}
        for k, c in enumerate(clients):
            for m, scores in _round_scores(sig, ri, k, labels[c].index, s).items():
                blocks[m][c] = same_centre(labels[c], scores)
        for m in methods:
            curves[m].append({"round": r, **mean_auc(blocks[m], s.bootstrap, s.seed)})
    return {"rounds": list(sig.rounds), "methods": curves}
