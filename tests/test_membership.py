"""Membership inference: ground truth by patient, per-sample signals, FedMIA on a toy federation where
one centre memorises its data, the shuffled-label control, and secure aggregation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fedi2i.attacks.membership import (MembershipSettings, Signals, build_candidates, collect_signals,
                                       run_membership, score_methods, settings_from_config)
from fedi2i.attacks.membership.candidates import check_disjoint
from fedi2i.attacks.membership.evaluation import bootstrap_auc, weighted_auc
from fedi2i.attacks.membership.fedmia import fedmia_scores
from fedi2i.attacks.membership.run import check_data_matches, choose_rounds
from fedi2i.attacks.membership.settings import SignalUnavailable
from fedi2i.attacks.membership.signals import ModelProbe, cosine_to
from fedi2i.config import Config, ModelConfig, load_config
from fedi2i.data.federation import FederatedData
from fedi2i.data.slices import PatientSplit, SliceSet
from fedi2i.errors import ConfigError, DataError
from fedi2i.fl.observer import ServerRecord
from fedi2i.fl.params import ParamSpec
from fedi2i.models import build_unet
from fedi2i.training import train

LOSS_ONLY = ["fedmia-loss", "loss", "loss-series", "grad-diff"]


def _idiosyncratic(slices: SliceSet) -> SliceSet:
    """Add a fixed random smooth pattern per slice to the CT: detail that the MRI cannot predict, so a
    model can only fit it by memorising the slice (as with real individual anatomy)."""
    ct = slices.ct.clone()
    for i in range(len(slices)):
        g = torch.Generator().manual_seed(int(slices.slice_index[i]) * 1009 + sum(map(ord, slices.patient[i])))
        field = F.interpolate(torch.randn(1, 1, 4, 4, generator=g), size=ct.shape[-2:], mode="bilinear",
                              align_corners=False)
        ct[i] = ct[i] + 0.15 * field[0] * slices.mask[i]
    return dataclasses.replace(slices, ct=ct)


def _toy_data(data: FederatedData) -> FederatedData:
    """Centre A keeps a single training patient (its other one becomes held out): A memorises it."""
    keep, moved = data.split.train["A"][:1], data.split.train["A"][1:]
    split = PatientSplit(train={**data.split.train, "A": keep},
                         val={**data.split.val, "A": sorted(data.split.val["A"] + moved)}, test=data.split.test)
    val_a = SliceSet.concat([data.val["A"], data.train["A"].of_patients(moved)])
    toy = dataclasses.replace(data, split=split, train={**data.train, "A": data.train["A"].of_patients(keep)},
                              val={**data.val, "A": val_a})
    return dataclasses.replace(toy, train={c: _idiosyncratic(s) for c, s in toy.train.items()},
                               val={c: _idiosyncratic(s) for c, s in toy.val.items()},
                               test={c: _idiosyncratic(s) for c, s in toy.test.items()})


def _toy_config(phantom_root: Path, secagg: bool) -> Config:
    return load_config("tiny", {"data.root": str(phantom_root), "data.slice_stride": 3, "train.rounds": 2,
                                "train.local_epochs": 40, "train.batch_size": 16,
                                "train.threads": 1, "train.lr_schedule": "constant",
                                "federation.eval_every": 0, "secagg.enabled": secagg})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads can be 20x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FederatedData]:
    from fedi2i.data.federation import load_federation

    cfg = _toy_config(phantom_root, secagg=False)
    data = _toy_data(load_federation(cfg.data, cfg.seed))
    run_dir = tmp_path_factory.mktemp("mia") / "plain"
    train(cfg, run_dir, data)
    return run_dir, data


@pytest.fixture(scope="module")
def toy_secagg(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory, toy) -> Path:
    cfg = _toy_config(phantom_root, secagg=True)
    run_dir = tmp_path_factory.mktemp("mia") / "secagg"
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"rounds": 1})}), run_dir, toy[1])
    return run_dir


def test_members_and_nonmembers_never_share_a_patient(tiny_data) -> None:
    cands = build_candidates(tiny_data, max_slices_per_patient=3, seed=0)
    members = {p for p, c in cands.member_of.items() if c is not None}
    outsiders = set(cands.nonmembers())
    assert members == set(tiny_data.split.all_train()) and not members & outsiders
    held_out = (tiny_data.split.val, tiny_data.split.test)
    assert outsiders == {p for split in held_out for pids in split.values() for p in pids}
    assert set(cands.slices.patient) == members | outsiders
    assert max(cands.slices.patient.count(p) for p in cands.patients) == 3
    for centre in tiny_data.split.train:
        labels = cands.labels_for(centre)
        evaluated = set(labels.patient)
        assert set(labels.patient[labels.label == 1]) == set(tiny_data.split.train[centre])
        assert not evaluated & (members - set(tiny_data.split.train[centre]))  # other centres' members left out
        same = set(labels.patient[labels.group == "same_centre"])
        assert same == set(tiny_data.split.val.get(centre, []) + tiny_data.split.test.get(centre, []))
    # same seed, same candidates; the draw depends on the seed
    again = build_candidates(tiny_data, max_slices_per_patient=3, seed=0)
    assert torch.equal(again.slices.slice_index, cands.slices.slice_index)
    other = build_candidates(tiny_data, max_slices_per_patient=3, seed=1)
    assert not torch.equal(other.slices.slice_index, cands.slices.slice_index)


def test_overlapping_split_is_refused(tiny_data) -> None:
    leaked = tiny_data.split.train["A"][0]
    bad = PatientSplit(train=tiny_data.split.train, val={**tiny_data.split.val, "B": [leaked]},
                       test=tiny_data.split.test)
    with pytest.raises(DataError, match="both training and held-out"):
        check_disjoint(dataclasses.replace(tiny_data, split=bad))
    twice = PatientSplit(train={**tiny_data.split.train, "B": tiny_data.split.train["B"] + [leaked]},
                         val=tiny_data.split.val, test=tiny_data.split.test)
    with pytest.raises(DataError, match="both centre A and"):
        build_candidates(dataclasses.replace(tiny_data, split=twice), 3, 0)


def test_vmap_gradients_match_per_sample_backward_in_eval_mode(tiny_data) -> None:
    torch.manual_seed(0)
    model = build_unet(ModelConfig(channels=[4, 8, 16]))
    spec = ParamSpec.from_module(model)
    probe = ModelProbe(model, spec, "l1")
    # non-trivial BatchNorm statistics, so eval mode matters
    probe.load(spec.flatten(model.state_dict()) + 0.05 * torch.randn(spec.numel))
    mr, ct = tiny_data.train["A"].mr[:5], tiny_data.train["A"].ct[:5]
    fast = torch.cat([g for _, g in probe.gradients(mr, ct, chunk=2)])
    slow = torch.cat([g for _, g in probe.gradients_loop(mr, ct)])
    assert fast.shape == (5, int(probe.param_mask.sum()))
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4)
    # a slice's gradient does not depend on the other slices of its chunk (BatchNorm in eval mode)
    alone = next(probe.gradients(mr[3:4], ct[3:4], chunk=1))[1]
    assert torch.allclose(alone[0], fast[3], atol=1e-5, rtol=1e-4)
    losses = probe.losses(mr, ct, batch_size=2)
    with torch.no_grad():
        direct = (model(mr) - ct).abs().flatten(1).mean(1).double().numpy()
    assert np.allclose(losses, direct, atol=1e-6)
    # descent direction aligned with the update: cosine +1
    cos = cosine_to(fast[:1], -fast[:1] * 3)
    assert torch.allclose(cos, torch.ones(1, 1), atol=1e-5)


def test_fedmia_gaussian_test_on_synthetic_signals() -> None:
    rng = np.random.default_rng(0)
    rounds, clients, n = 3, 4, 400
    difficulty = rng.normal(0, 2, n)  # per-sample difficulty shared by every model: FedMIA cancels it
    signal = difficulty + rng.normal(0, 0.3, (rounds, clients, n))
    member = rng.random(n) < 0.5
    signal[:, 0, member] += 0.6  # target 0 fits its members a little better
    scores, used = fedmia_scores(signal, 0, np.arange(n))
    assert used == 3 and scores.min() >= 0 and scores.max() <= 1
    assert roc_auc_score(member, scores) > 0.9
    assert roc_auc_score(member, signal[:, 0].mean(0)) < 0.7  # the raw signal drowns in the difficulty
    for mode in ("per-sample", "floored"):
        assert roc_auc_score(member, fedmia_scores(signal, 0, np.arange(n), sigma=mode)[0]) > 0.8
    signal[:, 2:] = np.nan  # only one reference centre left
    with pytest.raises(SignalUnavailable, match="at least 2 other centres"):
        fedmia_scores(signal, 0, np.arange(n))


def test_clustered_bootstrap_auc() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=120), 1)  # ties
    label = (rng.random(120) < 0.4).astype(int)
    weights = rng.integers(0, 3, size=(1, 120))
    rows = np.repeat(np.arange(120), weights[0])
    assert np.isclose(weighted_auc(scores, label, weights)[0], roc_auc_score(label[rows], scores[rows]))
    lo, hi = bootstrap_auc(label, scores + label, np.arange(120) // 4, 200, 0)
    assert lo < roc_auc_score(label, scores + label) < hi


def test_fedmia_detects_the_memorising_centre(toy) -> None:
    run_dir, data = toy
    record = ServerRecord(run_dir)
    rounds = choose_rounds(record, "all")
    clients = check_data_matches(record, rounds, data)
    cands = build_candidates(data, max_slices_per_patient=4, seed=0)
    sig = collect_signals(record, rounds, clients, cands, {"loss_target", "loss_global", "grad"})
    settings = MembershipSettings(methods=LOSS_ONLY + ["fedmia-grad"], bootstrap=50)
    results, _ = score_methods(sig, cands, clients, settings)
    a = results["fedmia-loss"]["centres"]["A"]
    assert a["slice"]["auc"] > 0.85 and a["patient"]["auc"] > 0.85
    assert a["slice"]["auc_same_centre"] > 0.75
    assert a["slice"]["n_members"] == 4 and a["patient"]["n_members"] == 1
    assert results["fedmia-loss"]["slice_auc_mean"] > 0.7
    assert results["fedmia-grad"]["centres"]["A"]["slice"]["auc"] > 0.7
    # control: membership permuted among the evaluated patients -> chance level, averaged over draws
    shuffled = []
    for seed in range(4):
        control = settings.model_copy(update={"shuffle_labels": True, "seed": seed, "bootstrap": 0,
                                              "methods": ["fedmia-loss"]})
        res, _ = score_methods(sig, cands, clients, control)
        shuffled += [v["slice"]["auc"] for v in res["fedmia-loss"]["centres"].values()]
    assert abs(np.mean(shuffled) - 0.5) < 0.12


def test_run_membership_writes_results(toy, tmp_path: Path) -> None:
    run_dir, data = toy
    settings = MembershipSettings(methods=["fedmia-loss", "loss-global"], max_slices_per_patient=2,
                                  bootstrap=20)
    result = run_membership(run_dir, data, settings, out_dir=tmp_path)

    def refuse(constant: str) -> None:
        raise AssertionError(f"membership.json holds {constant}, which strict JSON readers refuse")

    on_disk = json.loads((tmp_path / "membership.json").read_text(), parse_constant=refuse)
    # every requested method, scored for every centre of the record (what the audit reads back)
    clients = sorted(ServerRecord(run_dir).round(0).updates)
    assert set(on_disk["methods"]) == {"fedmia-loss", "loss-global"}
    assert all(sorted(m["centres"]) == clients for m in on_disk["methods"].values())
    assert not result["secure"] and result["rounds"] == [0, 1]
    block = result["methods"]["loss-global"]["centres"]["B"]["patient"]
    for key in ("auc", "tpr@1e-2", "tpr@1e-3", "n_members", "n_nonmembers", "auc_same_centre",
                "auc_other_centre", "auc_ci95"):
        assert key in block
    assert "fedmia-loss | slice" in (tmp_path / "membership.md").read_text()
    assert (tmp_path / "membership.csv").read_text().count("\n") == 1 + 2 * 4 * 2
    assert (tmp_path / "roc_fedmia-loss.png").stat().st_size > 5000
    # same seed, same numbers; the saved signals re-score to the same result
    again = run_membership(run_dir, data, settings)
    assert again["methods"] == result["methods"]
    sig = Signals.load(tmp_path / "signals.npz")
    cands = build_candidates(data, 2, settings.seed)
    assert sig.loss_target.shape == (2, 4, len(cands)) and sig.cos_target is None
    rescored, _ = score_methods(sig, cands, sig.clients, settings)
    assert rescored["fedmia-loss"] == result["methods"]["fedmia-loss"]


def test_wrong_data_is_refused(toy, tiny_data) -> None:
    run_dir, _ = toy
    with pytest.raises(DataError, match="not the data the run trained on"):
        run_membership(run_dir, tiny_data, MembershipSettings(methods=["loss"]))


def test_secure_aggregation_leaves_no_target_signal(toy, toy_secagg: Path) -> None:
    _, data = toy
    record = ServerRecord(toy_secagg)
    view = record.round(0)
    assert view.secure and view.updates == {}
    settings = MembershipSettings(methods=["fedmia-loss", "fedmia-grad", "loss", "grad-cosine"],
                                  max_slices_per_patient=2, bootstrap=0)
    result = run_membership(toy_secagg, data, settings)
    assert result["secure"]
    for name in ("fedmia-loss", "fedmia-grad"):
        entry = result["methods"][name]
        assert entry["available"] is False and "unavailable by construction" in entry["reason"]
    assert result["methods"]["loss"]["available"] and "aggregate" in result["methods"]["loss"]["target_model"]
    # every centre's "model" is the one aggregate model: identical signal columns
    cands = build_candidates(data, 2, 0)
    sig = collect_signals(record, [0], sorted(data.train), cands, {"loss_target"})
    assert sig.loss_target is not None
    assert np.array_equal(sig.loss_target[0, 0], sig.loss_target[0, 3])


def test_settings_come_from_the_config() -> None:
    s = settings_from_config({"membership": {"methods": ["loss"], "max_slices_per_patient": 5}}, seed=3)
    assert s.methods == ["loss"] and s.max_slices_per_patient == 5 and s.seed == 3
    with pytest.raises(ConfigError, match="unknown method"):
        settings_from_config({"membership": {"methods": ["fedmia"]}})
    with pytest.raises(ConfigError, match="unknown key"):
        settings_from_config({"membership": {"max_slice": 5}})


def test_cli_attack_membership(phantom_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import fedi2i.cli.attack_membership  # noqa: F401  (registers the command)
    from fedi2i.cli import app

    cfg = load_config("tiny", {"data.root": str(phantom_root), "train.rounds": 1, "train.threads": 1,
                               "data.slice_stride": 3, "federation.eval_every": 0})
    train(cfg, tmp_path / "run")
    runner = CliRunner()
    out = runner.invoke(app, ["attack", "membership", "--run", str(tmp_path / "run"), "-m", "fedmia-loss",
                              "-m", "loss", "--max-slices", "2", "-q"])
    assert out.exit_code == 0, out.output
    assert "fedmia-loss" in out.output
    result = json.loads((tmp_path / "run" / "attacks" / "membership" / "membership.json").read_text())
    assert set(result["methods"]) == {"fedmia-loss", "loss"}
    bad = runner.invoke(app, ["attack", "membership", "--run", str(tmp_path / "run"), "-m", "nope"])
    assert bad.exit_code == 2 and "'nope' is not one of" in bad.output  # the CLI's choice, before any work
