"""An actively malicious server against fedi2i's own SecAgg and DP code: one test per attack.

Each attack is played against the real protocol objects. With its protection off it recovers the victim's
update (or corrupts the sum unnoticed), which shows the attack works; with the protection on it fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedi2i.audit import defence_checks as D
from fedi2i.config import Config, DPConfig
from fedi2i.errors import SecAggAbort
from fedi2i.fl.client import LocalTrainer, clip_and_noise, dp_noise_generator
from fedi2i.fl.secagg import (InconsistentView, SecAggClient, SecAggConfig, SecAggServer, directory_of,
                              generate_identities, secure_sum, shamir)
from fedi2i.fl.secagg.messages import ConsistencyRequest, UnmaskRequest


def _exposed(check: D.DefenceCheck) -> bool:
    return not check.blocked and check.error is not None and check.error < D.RECOVERED


def test_server_chosen_weights():
    off, on = D.server_chosen_weights(protected=False), D.server_chosen_weights(protected=True)
    assert _exposed(off) and off.error < 1e-5  # weight 1 vs 1e-7: the "mean" is the victim's update
    assert on.blocked and on.error > 0.5


def test_client_weights_come_from_counts_inside_the_masked_sum():
    """The server divides the two sums it gets; a dropped client removes its own count."""
    from fedi2i.fl.secagg.weighting import secure_mean, weighted_input

    cfg = SecAggConfig(max_weight=1000)
    rng = np.random.default_rng(0)
    deltas = {c: rng.uniform(-0.3, 0.3, 50).astype(np.float32) for c in "ABCD"}
    counts = {"A": 100, "B": 300, "C": 50, "D": 900}
    inputs = {c: weighted_input(deltas[c], counts[c], cfg) for c in deltas}
    res = secure_sum(inputs, cfg, dropouts={"masked_input": ["B"]})
    expected = sum(counts[c] * deltas[c].astype(np.float64) for c in "ACD") / sum(counts[c] for c in "ACD")
    np.testing.assert_allclose(secure_mean(res.total, cfg).numpy(), expected, atol=1e-6)


def test_dp_noise_replay():
    off, on = D.dp_noise_replay(protected=False), D.dp_noise_replay(protected=True)
    assert _exposed(off)
    assert on.blocked and on.error > 10


def test_dp_noise_replay_against_local_training(tiny_config: Config, tiny_data):
    """The server replays the noise of a real DP-FedAvg update only when the run is reproducible."""
    dp = DPConfig(enabled=True, mode="update", clip=1.0, noise_multiplier=1.0)
    slices = tiny_data.train["A"]
    start: list[torch.Tensor] = []

    def update(noise: float, reproducible: bool) -> torch.Tensor:
        trainer = LocalTrainer("A", slices, tiny_config.model, tiny_config.train.model_copy(update={"local_steps": 2}),
                               tiny_config.seed,
                               dp=dp.model_copy(update={"noise_multiplier": noise}), reproducible=reproducible)
        start.append(start[0] if start else trainer.spec.flatten(trainer.model.state_dict()))
        return trainer.fit(start[0], 2).delta

    clipped = update(0.0, True)  # batch order is seeded either way: this is the update under the noise
    replay = clip_and_noise(torch.zeros_like(clipped), 1.0, 1.0, dp_noise_generator(True, tiny_config.seed, 2, "A"))
    assert torch.allclose(update(1.0, True) - replay, clipped, atol=1e-5)
    assert not torch.allclose(update(1.0, False) - replay, clipped, atol=1e-1)


def test_dropped_client_lie_with_low_threshold():
    off, on = D.dropped_client_lie(protected=False), D.dropped_client_lie(protected=True)
    assert _exposed(off)
    assert on.blocked and on.error is None and "strict majority" in on.evidence


def test_inconsistent_views_with_selective_forwarding_at_n10():
    off = D.inconsistent_views(protected=False, n=10)
    assert _exposed(off) and "t=6" in off.evidence
    on = D.inconsistent_views(protected=True, n=10)
    assert on.blocked and on.error is None
    assert re.search(r"does not verify on the survivor set .* showed clients different survivor sets", on.evidence)


def test_different_survivor_sets_abort_before_any_share_is_revealed():
    ids = [f"c{i}" for i in range(5)]
    identities = generate_identities(ids)
    server = SecAggServer(SecAggConfig(), ids, vector_length=8)
    clients = {c: SecAggClient(SecAggConfig(), c, np.zeros(8), identity=identities[c],
                               directory=directory_of(identities)) for c in ids}
    req = server.collect_advertise([clients[c].advertise_keys(server.setup_request()) for c in ids])
    req = server.collect_shares([clients[c].share_keys(r) for c, r in req.items()])
    req = server.collect_masked_inputs([clients[c].masked_input(r) for c, r in req.items()])
    shown = {c: tuple(x for x in ids if x != "c2") if c == "c3" else tuple(ids) for c in ids}  # c3 sees c2 dropped
    signatures = {c: clients[c].consistency(ConsistencyRequest(shown[c])).signature for c in ids}
    honest = UnmaskRequest(tuple(ids), (), signatures)
    with pytest.raises(InconsistentView, match="signature of c3 does not verify on the survivor set"):
        clients["c0"].unmask(honest)
    assert clients["c0"].revealed_b == set() and clients["c0"].revealed_s == set()
    # a forged signature is caught the same way
    forged = UnmaskRequest(tuple(ids), (), {**signatures, "c3": signatures["c4"]})
    with pytest.raises(InconsistentView, match="c3"):
        clients["c1"].unmask(forged)


def test_graph_seed_grinding():
    off = D.graph_seed_grinding(protected=False)
    assert not off.blocked and off.error == 0.0 and "rebuilt its self-mask seed and masking key" in off.evidence
    on = D.graph_seed_grinding(protected=True)
    assert on.blocked and "was ignored" in on.evidence


def test_wrapped_upload():
    off, on = D.wrapped_upload(protected=False), D.wrapped_upload(protected=True)
    assert not off.blocked and off.error > 1  # the sum was corrupted and accepted
    assert on.blocked and "leaves its range" in on.evidence


def test_corrupted_share():
    off, on = D.corrupted_share(protected=False), D.corrupted_share(protected=True)
    assert not off.blocked and off.error > 1
    assert on.blocked and "signed commitment" in on.evidence


def test_corrupted_share_among_more_than_t_is_caught():
    """With more than t shares every extra one is checked against the polynomial of the first t."""
    server = SecAggServer(SecAggConfig(), [f"c{i}" for i in range(5)])
    shares = dict(shamir.split(bytes(32), server.threshold, [1, 2, 3, 4, 5]))
    assert server._reconstruct(shares, "c4", "self-mask seed") == bytes(32)
    shares[5] = (shares[5] + 1) % shamir.PRIME
    with pytest.raises(SecAggAbort, match="inconsistent"):
        server._reconstruct(shares, "c4", "self-mask seed")


def test_audit_section_reads_blocked_for_the_default_config():
    rows = D.run_defence_checks(Config())
    assert [r.attack for r in rows] == ["server-chosen weights", "DP noise replay", "dropped-client lie",
                                        "inconsistent views", "graph-seed grinding", "wrapped upload",
                                        "corrupted share"]
    assert all(r.blocked for r in rows), [r for r in rows if not r.blocked]
    html = D.defence_section_html(Config())
    assert "Is the defence implemented right?" in html and "NOT blocked" not in html


def test_audit_section_flags_a_reproducible_run():
    html = D.defence_section_html(Config(reproducible_secrets=True))
    assert "NOT blocked" in html and "reproducible_secrets" in html


def test_report_lists_the_section():
    from fedi2i.audit import report

    assert any(name == "is the defence implemented right?" for name, _ in report.SECTIONS)


def test_keys_files(tmp_path: Path):
    from fedi2i.errors import ConfigError
    from fedi2i.fl.secagg.identity import KEYS_FILE, load_directory, load_identity, write_identities

    public = write_identities(tmp_path, ["A", "B"])
    assert (tmp_path / "A.key").stat().st_mode & 0o777 == 0o600
    assert load_directory(tmp_path / KEYS_FILE) == {c: bytes.fromhex(k) for c, k in public.items()}
    assert load_identity(tmp_path / "B.key").public_bytes.hex() == public["B"]
    with pytest.raises(ConfigError, match="exists"):
        write_identities(tmp_path, ["A"])
