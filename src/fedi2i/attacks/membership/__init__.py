"""Federated membership inference: did centre k train on patient z? FedMIA and baselines.

Public API (what the audit calls):

- ``MembershipSettings`` (pydantic; from ``config.attacks["membership"]`` via ``settings_from_config``):
  methods, rounds, max_slices_per_patient, seed, sigma, bootstrap, shuffle_labels.
- ``run_membership(run_dir, data=None, settings=None, out_dir=None, progress=None) -> dict``: one cell =
  one trained run (its defence is how it was trained). Returns a JSON-serialisable dict; per method
  either ``{"available": False, "reason": ...}`` (FedMIA under secure aggregation) or per centre and
  level ("slice", "patient"): ``auc``, ``tpr@1e-2``, ``tpr@1e-3``, ``n_members``, ``n_nonmembers``,
  ``auc_same_centre``, ``auc_other_centre``, bootstrap intervals. Writes ``membership.json``,
  ``membership.csv``, ``membership.md`` and ``roc_<method>.png`` into ``out_dir``.
- ``METHODS``: the method catalogue (name -> summary, whether it needs individual updates).
- Lower level, for experiments: ``build_candidates`` (ground truth by patient), ``collect_signals``
  (every candidate on every rebuilt model), ``score_methods`` (scores + metrics from signals).

See docs/membership.md for the threat model, the methods and the measured numbers.
"""

from fedi2i.attacks.membership.candidates import Candidates, build_candidates
from fedi2i.attacks.membership.collect import Signals, collect_signals
from fedi2i.attacks.membership.run import run_membership, score_methods
from fedi2i.attacks.membership.settings import (METHODS, MembershipSettings, SignalUnavailable,
                                                settings_from_config)

__all__ = ["METHODS", "Candidates", "MembershipSettings", "Signals", "SignalUnavailable", "build_candidates",
           "collect_signals", "run_membership", "score_methods", "settings_from_config"]
