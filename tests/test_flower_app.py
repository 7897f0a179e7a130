"""Flower runtime pieces without a SuperLink: node data, SecAgg state across processes, codec, rounds.

The rounds run the real ClientApp functions through :class:`InProcessTransport`, which rebuilds each
node's Context from protobuf for every message (as a fresh ClientApp process gets it) and sends every
message through protobuf, so what passes here is what a deployment carries.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict  # noqa: E402

from fedi2i.config import Config, config_from_dict  # noqa: E402
from fedi2i.data.synthrad import scan_dataset  # noqa: E402
from fedi2i.errors import ConfigError, DataError  # noqa: E402
from fedi2i.fl.flower import clientapp  # noqa: E402
from fedi2i.fl.flower import protocol as P  # noqa: E402
from fedi2i.fl.flower.codec import record_secagg, record_vector, secagg_records, vector_record  # noqa: E402
from fedi2i.fl.flower.deploy import app_pyproject, connection_toml, node_config_arg, superlink_command  # noqa: E402
from fedi2i.fl.flower.inprocess import InProcessTransport, wire  # noqa: E402
from fedi2i.fl.flower.nodedata import load_centre  # noqa: E402
from fedi2i.fl.flower.rounds import ServerRounds  # noqa: E402
from fedi2i.fl.flower.state import dump_client, load_client  # noqa: E402
from fedi2i.fl.observer import ServerRecord  # noqa: E402
from fedi2i.fl.secagg import (ProtocolViolation, SecAggClient, SecAggConfig, SecAggServer,  # noqa: E402
                               directory_of, generate_identities, secure_sum)
from fedi2i.fl.secagg.identity import KEYS_FILE, write_identities  # noqa: E402
from fedi2i.training import RunOptions, train  # noqa: E402

CENTRES = ["A", "B", "C"]


def _cfg(tiny_config: Config, **sections) -> Config:
    base = {"data": {"train_centres": CENTRES}, "train": {"rounds": 1, "threads": 1},
            "federation": {"eval_every": 0}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    update = {k: getattr(tiny_config, k).model_copy(update=v) for k, v in base.items()}
    # the runtimes are compared bit for bit: the DP noise and rounding dither come from the seed here
    return tiny_config.model_copy(update={**update, "reproducible_secrets": True})


def _three(data):
    """The fixture's federation restricted to the three centres the nodes serve."""
    return dataclasses.replace(data, train={c: data.train[c] for c in CENTRES},
                               val={c: data.val[c] for c in CENTRES if c in data.val})


def _keys(folder: Path) -> Path:
    """Each centre's identity key and the federation's key list, as `fedi2i flower keys` writes them."""
    if not (folder / KEYS_FILE).exists():
        write_identities(folder, CENTRES)
    return folder


def _transport(cfg: Config, root: Path, keys: Path | None = None, **kwargs) -> InProcessTransport:
    # node ids in another order than the centres: the server must map them by what the nodes say
    nodes = {300 - i: {P.NODE_CENTRE: c, P.NODE_DATA: str(root)} for i, c in enumerate(CENTRES)}
    if keys is not None:
        for i, c in enumerate(CENTRES):
            nodes[300 - i].update({P.NODE_IDENTITY: str(keys / f"{c}.key"), P.NODE_FEDERATION_KEYS: str(keys / KEYS_FILE)})
    return InProcessTransport(nodes, {P.RUN_CONFIG_YAML: yaml.safe_dump(cfg.model_dump(mode="json"))}, **kwargs)


# ------------------------------------------------------------------ node data
def test_node_data_matches_load_federation(tiny_config: Config, tiny_data, phantom_root: Path) -> None:
    cfg = tiny_config  # the fixture's federation: train centres A-D
    for centre in cfg.data.train_centres:
        mine = load_centre(cfg.data, cfg.seed, centre, phantom_root)
        train_set, ref = mine.split("train"), tiny_data.train[centre]
        assert mine.ids["train"] == tiny_data.split.train[centre]
        assert mine.ids["val"] == tiny_data.split.val[centre]
        assert mine.ids["test"] == tiny_data.split.test[centre]
        assert train_set.patient == ref.patient
        for name in ("mr", "ct", "mask"):
            assert torch.equal(getattr(train_set, name), getattr(ref, name)), (centre, name)
    with pytest.raises(ConfigError, match="not a training centre"):
        load_centre(cfg.data, cfg.seed, "E", phantom_root)


def test_node_data_reads_a_single_centre_folder(tiny_config: Config, tiny_data, phantom_root: Path,
                                                tmp_path: Path) -> None:
    """A hospital holds only its own patients: the split must not depend on the other centres."""
    for record in scan_dataset(phantom_root):
        if record.centre == "C":
            (tmp_path / record.pid).symlink_to(phantom_root / record.pid)
    mine = load_centre(tiny_config.data, tiny_config.seed, "C", tmp_path)
    assert mine.ids["train"] == tiny_data.split.train["C"]
    assert torch.equal(mine.split("train").ct, tiny_data.train["C"].ct)
    with pytest.raises(DataError, match="no patients of centre B"):
        load_centre(tiny_config.data, tiny_config.seed, "B", tmp_path)


def test_node_leaves_a_bad_patient_out_before_the_split_as_load_federation_does(tiny_config: Config,
                                                                               phantom_root: Path,
                                                                               tmp_path: Path) -> None:
    """With skip_bad a patient that fails its checks takes no place in either split (a node that split first
    and skipped the patient later would train on other patients than the in-process engine)."""
    import shutil

    from fedi2i.data.federation import load_federation

    bad = sorted(r.pid for r in scan_dataset(phantom_root) if r.centre == "A")[0]
    for record in scan_dataset(phantom_root):
        if record.pid == bad:
            shutil.copytree(phantom_root / record.pid, tmp_path / record.pid)
            (tmp_path / record.pid / "mr.nii.gz").write_bytes(b"")  # unreadable
        else:
            (tmp_path / record.pid).symlink_to(phantom_root / record.pid)
    cfg = tiny_config.data.model_copy(update={"root": tmp_path, "skip_bad": True})
    ref = load_federation(cfg, tiny_config.seed, progress=False)
    assert list(ref.skipped) == [bad]
    for centre in cfg.train_centres:
        mine = load_centre(cfg, tiny_config.seed, centre, tmp_path)
        assert {k: mine.ids[k] for k in ("train", "val", "test")} == \
            {"train": ref.split.train[centre], "val": ref.split.val[centre], "test": ref.split.test[centre]}
        assert torch.equal(mine.split("train").mr, ref.train[centre].mr)
    strict = load_centre(cfg.model_copy(update={"skip_bad": False}), tiny_config.seed, "A", tmp_path)
    with pytest.raises(DataError, match=bad):  # without skip_bad the split holding it names the patient
        for split in ("train", "val", "test"):
            strict.split(split)


# ------------------------------------------------------------------ SecAgg state and messages
def _drive(vectors: dict[str, np.ndarray], cfg: SecAggConfig, seed: int, reload: bool):
    """One SecAgg round where, with ``reload``, every client is serialised and rebuilt between stages
    and every message goes through Flower records and protobuf."""
    ids = sorted(vectors)
    server = SecAggServer(cfg, ids, seed, vector_length=len(next(iter(vectors.values()))))
    identities = generate_identities(ids)
    states = {c: SecAggClient(cfg, c, None, identity=identities[c], directory=directory_of(identities),
                              rounding_seed=seed) for c in ids}

    def via_records(message):
        return record_secagg(wire(RecordDict(secagg_records(message, "m"))), "m") if reload else message

    def call(cid, method, request, *args):
        client = load_client(dump_client(states[cid]), identities[cid]) if reload else states[cid]
        reply = getattr(client, method)(via_records(request), *args)
        states[cid] = client
        return via_records(reply)

    setup = server.setup_request()
    requests = server.collect_advertise([call(c, "advertise_keys", setup) for c in ids])
    requests = server.collect_shares([call(c, "share_keys", r) for c, r in requests.items()])
    requests = server.collect_masked_inputs([call(c, "masked_input", r, vectors[c]) for c, r in requests.items()])
    requests = server.collect_consistency([call(c, "consistency", r) for c, r in requests.items()])
    return server.collect_unmask([call(c, "unmask", r) for c, r in requests.items()]), states


def test_secagg_client_survives_serialisation_between_stages() -> None:
    rng = np.random.default_rng(3)
    vectors = {c: rng.uniform(-0.5, 0.5, 2000).astype(np.float32) for c in ("h1", "h2", "h3", "h4")}
    cfg = SecAggConfig(enabled=True, clip=1.0)
    result, states = _drive(vectors, cfg, seed=11, reload=True)
    reference = secure_sum(vectors, cfg, seed=11)
    # the masks cancel exactly and the dither is seeded: the sum is bit-identical to the in-process driver
    assert np.array_equal(result.total, reference.total)
    assert result.survivors == reference.survivors == sorted(vectors)
    # what the server received is masked: no upload equals the client's quantised input
    for cid, upload in result.masked_uploads.items():
        assert np.corrcoef(upload.astype(np.float64), vectors[cid])[0, 1] < 0.1
    # every attribute came back, with the revealed-share bookkeeping that forbids a second unmask
    restored = load_client(dump_client(states["h1"]), states["h1"].identity)
    assert set(vars(restored)) == set(vars(states["h1"]))
    assert b"PRIVATE" not in dump_client(states["h1"])  # the long-term identity key is not copied into the state
    assert restored.revealed_b == states["h1"].revealed_b and restored.stage == "done"


def test_state_refuses_unknown_attribute_types() -> None:
    client = SecAggClient(SecAggConfig(enabled=True), "h1", None)
    client.extra = object()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="cannot serialise"):
        dump_client(client)


def test_vectors_cross_the_wire_bit_for_bit() -> None:
    vec = torch.randn(1234, generator=torch.Generator().manual_seed(0)) * 1e-3
    back = record_vector(wire(RecordDict({"v": vector_record(vec)}))["v"])
    assert back.dtype == np.float32 and np.array_equal(back, vec.numpy())


# ------------------------------------------------------------------ node settings
def _message(kind: str, content: RecordDict | None = None) -> Message:
    return Message(content or RecordDict(), metadata=Metadata(
        run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="0",
        created_at=0.0, ttl=60.0, message_type=kind))


def test_node_settings_errors_say_what_to_set(tiny_config: Config, phantom_root: Path) -> None:
    rc = {P.RUN_CONFIG_YAML: yaml.safe_dump(tiny_config.model_dump(mode="json"))}
    with pytest.raises(ConfigError, match="lacks.*data-path"):
        clientapp.NodeSettings.from_node_config({P.NODE_CENTRE: "A"})
    with pytest.raises(ConfigError, match="unknown node-config"):
        clientapp.NodeSettings.from_node_config({P.NODE_CENTRE: "A", P.NODE_DATA: "/x", "centre": "A"})
    ctx = Context(1, 7, {P.NODE_CENTRE: "E", P.NODE_DATA: str(phantom_root)}, RecordDict(), rc)
    with pytest.raises(ConfigError, match="not a training centre"):
        clientapp.describe(_message(P.DESCRIBE), ctx)
    ctx = Context(1, 7, {P.NODE_CENTRE: "A", P.NODE_DATA: str(phantom_root)}, RecordDict(), rc)
    reply = clientapp.describe(_message(P.DESCRIBE), ctx)
    assert reply.content[P.REC_INFO]["centre"] == "A"
    # a node that insists on secure aggregation never trains for a plain round
    strict = Context(1, 7, {P.NODE_CENTRE: "A", P.NODE_DATA: str(phantom_root), P.NODE_REQUIRE_SECAGG: True},
                     RecordDict(), rc)
    with pytest.raises(ConfigError, match="only through secure aggregation"):
        clientapp.fit(_message(P.FIT, RecordDict({P.REC_ROUND: ConfigRecord({"round": 0, "lr": 0.1})})), strict)


# ------------------------------------------------------------------ whole rounds, in one process
def test_rounds_match_the_engine_plain(tiny_config: Config, tiny_data, phantom_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_config, federation={"eval_every": 1})
    engine = train(cfg, tmp_path / "engine", _three(tiny_data))
    transport = _transport(cfg, phantom_root)
    run = ServerRounds(cfg, tmp_path / "flower", transport, poll=0.0).run()
    assert torch.equal(run.global_vector, engine.run.global_vector)  # bit-identical
    entry, ref = run.history[0], engine.run.history[0]
    assert entry["train_loss"] == ref["train_loss"] and entry["val"] == ref["val"]
    assert [k for k, _ in transport.calls].count(P.FIT) == 3
    view, ref_view = ServerRecord(tmp_path / "flower").round(0), ServerRecord(tmp_path / "engine").round(0)
    assert sorted(view.updates) == CENTRES and all(torch.equal(view.updates[c], ref_view.updates[c]) for c in CENTRES)
    assert view.meta["steps"] == ref_view.meta["steps"]
    # a second run on the same folder resumes from the checkpoint instead of training again
    again = ServerRounds(cfg, tmp_path / "flower", _transport(cfg, phantom_root), poll=0.0)
    assert torch.equal(again.run().global_vector, run.global_vector)


def test_rounds_match_the_engine_secagg_with_dropout(tiny_config: Config, tiny_data, phantom_root: Path,
                                                     tmp_path: Path) -> None:
    cfg = _cfg(tiny_config, secagg={"enabled": True, "threshold": 0.5})
    engine = train(cfg, tmp_path / "engine", _three(tiny_data), RunOptions(dropouts=lambda r: {"masked_input": ["B"]}))
    transport = _transport(cfg, phantom_root, _keys(tmp_path / "keys"), drop={P.SECAGG_MASK: {299}})  # 299 serves B
    run = ServerRounds(cfg, tmp_path / "flower", transport, poll=0.0).run()
    assert run.history[0]["survivors"] == engine.run.history[0]["survivors"] == ["A", "C"]
    assert torch.equal(run.global_vector, engine.run.global_vector)  # same masks removed, same dither
    view = ServerRecord(tmp_path / "flower").round(0)
    assert view.secure and view.updates == {} and sorted(view.num_examples) == ["A", "C"]
    stages = [k for k, _ in transport.calls]
    assert [stages.count(s) for s in P.SECAGG_STAGES] == [3, 3, 3, 2, 2]
    assert P.FIT not in stages  # no plain update ever left a node


def test_validation_travels_with_training_and_flower_runs_get_test_figures(tiny_config: Config, tiny_data,
                                                                            phantom_root: Path, tmp_path: Path) -> None:
    """Round 0's validation rides in round 1's training message; only the last round's result needs an
    evaluation-only message. Test figures and metrics.json's head match the in-process run's."""
    cfg = _cfg(tiny_config, train={"rounds": 2}, federation={"eval_every": 1})
    engine = train(cfg, tmp_path / "engine", _three(tiny_data), RunOptions(native_eval=False))
    transport = _transport(cfg, phantom_root)
    run = ServerRounds(cfg, tmp_path / "flower", transport, poll=0.0).run()
    assert torch.equal(run.global_vector, engine.run.global_vector)
    assert [h["val"] for h in run.history] == [h["val"] for h in engine.run.history]
    stages = [k for k, _ in transport.calls]
    assert stages.count(P.FIT) == 6 and stages.count(P.EVALUATE) == 3 + 3  # last round's val, then test
    metrics = json.loads((tmp_path / "flower" / "metrics.json").read_text())
    assert metrics["seen"] == {c: engine.metrics["seen"][c] for c in CENTRES}
    head = {"rounds_done", "finished", "mode", "strategy", "secagg", "dp", "num_parameters", "runtime"}
    assert head <= set(metrics) and head <= set(engine.metrics) and metrics["runtime"] != engine.metrics["runtime"]
    assert metrics["train_slices"] == engine.metrics["train_slices"] == {c: len(tiny_data.train[c]) for c in CENTRES}


# ------------------------------------------------------------------ deployment files
def test_app_files_parse_and_carry_the_config(tiny_config: Config, tmp_path: Path) -> None:
    app = tomllib.loads(app_pyproject(tiny_config, tmp_path / "run"))
    assert app["project"]["dependencies"] == []
    assert app["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedi2i.fl.flower.clientapp:app"
    run_config = app["tool"]["flwr"]["app"]["config"]
    assert config_from_dict(yaml.safe_load(run_config[P.RUN_CONFIG_YAML])) == tiny_config
    conn = tomllib.loads(connection_toml("10.0.0.5:9092", root_certificates="/etc/ca.pem"))
    assert conn["superlink"]["default"] == "fedi2i"
    assert conn["superlink"]["fedi2i"] == {"address": "10.0.0.5:9092", "root-certificates": "/etc/ca.pem"}
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([node_config_arg("B", "/data/my hospital", require_secagg=True)])
    assert parsed == {P.NODE_CENTRE: "B", P.NODE_DATA: "/data/my hospital", P.NODE_REQUIRE_SECAGG: True}
    with pytest.raises(ConfigError, match="--ssl-certfile"):
        superlink_command("0.0.0.0", 9092)


def test_importing_fedi2i_does_not_import_flwr() -> None:
    code = ("import sys, fedi2i, fedi2i.fl.flower, fedi2i.fl.flower.deploy, fedi2i.fl.flower.protocol; "
            "print('flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ SecAgg node: identity and refusals
def _secagg_node(tmp_path: Path, tiny_config: Config):
    """Three centres' clients up to the unmask stage, with identity keys from files as nodes hold them;
    returns the unmask requests, node A's Context (its client in the node state) and A's client."""
    from fedi2i.fl.secagg.identity import load_directory, load_identity

    keys = _keys(tmp_path / "keys")
    directory = load_directory(keys / KEYS_FILE)
    cfg = SecAggConfig(enabled=True)
    server = SecAggServer(cfg, CENTRES, vector_length=16)
    clients = {c: SecAggClient(cfg, c, np.zeros(16), identity=load_identity(keys / f"{c}.key"), directory=directory)
               for c in CENTRES}
    req = server.collect_advertise([clients[c].advertise_keys(server.setup_request()) for c in CENTRES])
    req = server.collect_shares([clients[c].share_keys(r) for c, r in req.items()])
    req = server.collect_masked_inputs([clients[c].masked_input(r) for c, r in req.items()])
    req = server.collect_consistency([clients[c].consistency(r) for c, r in req.items()])
    node_config = {P.NODE_CENTRE: "A", P.NODE_DATA: str(tmp_path), P.NODE_IDENTITY: str(keys / "A.key"),
                   P.NODE_FEDERATION_KEYS: str(keys / KEYS_FILE)}
    rc = {P.RUN_CONFIG_YAML: yaml.safe_dump(tiny_config.model_dump(mode="json"))}
    state = RecordDict({P.STATE_CLIENT: ConfigRecord({"data": dump_client(clients["A"])})})
    return req, Context(1, 7, node_config, state, rc), clients["A"]


def _unmask_message(request) -> Message:
    return _message(P.SECAGG_UNMASK, RecordDict(secagg_records(request, P.REC_SECAGG)))


def test_node_refusal_at_unmask_is_persisted(tmp_path: Path, tiny_config: Config) -> None:
    req, ctx, client_a = _secagg_node(tmp_path, tiny_config)
    honest = req["A"]
    greedy = dataclasses.replace(honest, survivors=("A", "C"), dropped=("B",))  # B is alive: asks for its key
    before = bytes(ctx.state[P.STATE_CLIENT]["data"])
    with pytest.raises(ProtocolViolation, match="signed survivor set gives"):
        clientapp.secagg_unmask(_unmask_message(greedy), ctx)
    # the refusal is in the node state: the honest-looking second request is refused too
    with pytest.raises(ProtocolViolation, match="expecting 'aborted'"):
        clientapp.secagg_unmask(_unmask_message(honest), ctx)
    # without the stored refusal (the state from before it) the node would have answered the second request
    again = load_client(before, client_a.identity)
    assert set(again.unmask(honest).b_shares) == set(CENTRES)


def test_node_needs_its_own_identity_key_and_the_listed_keys(tmp_path: Path, tiny_config: Config) -> None:
    node = clientapp.NodeSettings.from_node_config({P.NODE_CENTRE: "A", P.NODE_DATA: str(tmp_path)})
    with pytest.raises(ConfigError, match="identity-key"):
        node.identity()
    with pytest.raises(ConfigError, match="federation-keys"):
        node.directory(tiny_config)
    keys = _keys(tmp_path / "keys")
    node = dataclasses.replace(node, identity_key=keys / "A.key", federation_keys=keys / KEYS_FILE)
    assert node.directory(tiny_config)["A"] == node.identity().public_bytes
    # a run config (written by the server) that lists another key for B is refused
    other = generate_identities(["B"])["B"].public_bytes.hex()
    swapped = tiny_config.model_copy(update={"secagg": tiny_config.secagg.model_copy(update={"identity_keys": {"B": other}})})
    with pytest.raises(ConfigError, match="substituting keys"):
        node.directory(swapped)


# ------------------------------------------------------------------ what a stage's process imports
_LIGHT_STAGES = '''
import sys
from pathlib import Path
import numpy as np
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from fedi2i.fl.flower import clientapp, protocol as P
from fedi2i.fl.flower.codec import record_secagg, secagg_records, vector_record
from fedi2i.fl.flower.state import dump_client
from fedi2i.fl.secagg import SecAggClient, SecAggConfig, SecAggServer
from fedi2i.fl.secagg.identity import KEYS_FILE, load_directory, load_identity

keys = Path(sys.argv[1])
directory = load_directory(keys / KEYS_FILE)
cfg = SecAggConfig(enabled=True)
ids = ["A", "B", "C"]
server = SecAggServer(cfg, ids, vector_length=16)
clients = {c: SecAggClient(cfg, c, np.zeros(16), identity=load_identity(keys / f"{c}.key"), directory=directory)
           for c in ids}
req = server.collect_advertise([clients[c].advertise_keys(server.setup_request()) for c in ids])
node = {P.NODE_CENTRE: "A", P.NODE_DATA: str(keys), P.NODE_IDENTITY: str(keys / "A.key"),
        P.NODE_FEDERATION_KEYS: str(keys / KEYS_FILE)}
state = RecordDict({P.STATE_CLIENT: ConfigRecord({"data": dump_client(clients.pop("A"))}),
                    P.STATE_DELTA: vector_record(np.zeros(16))})
ctx = Context(1, 7, node, state, {})

def round_trip(kind, fn, requests, collect):
    """Node A answers in its stage function (as its own process would), B and C in memory."""
    msg = Message(RecordDict(secagg_records(requests["A"], P.REC_SECAGG)), metadata=Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="0",
        created_at=0.0, ttl=60.0, message_type=kind))
    mine = record_secagg(fn(msg, ctx).content, P.REC_SECAGG)
    method = {P.SECAGG_SHARE: "share_keys", P.SECAGG_MASK: "masked_input", P.SECAGG_CHECK: "consistency",
              P.SECAGG_UNMASK: "unmask"}[kind]
    return collect([mine] + [getattr(clients[c], method)(requests[c]) for c in ("B", "C")])

req = round_trip(P.SECAGG_SHARE, clientapp.secagg_share, req, server.collect_shares)
req = round_trip(P.SECAGG_MASK, clientapp.secagg_mask, req, server.collect_masked_inputs)
req = round_trip(P.SECAGG_CHECK, clientapp.secagg_check, req, server.collect_consistency)
result = round_trip(P.SECAGG_UNMASK, clientapp.secagg_unmask, req, server.collect_unmask)
assert sorted(result.survivors) == ids
print(sorted(m for m in ("torch", "monai", "scipy", "SimpleITK", "nibabel", "matplotlib") if m in sys.modules))
'''


def test_secagg_key_stages_import_no_torch_or_image_libraries(tmp_path: Path) -> None:
    """The key-exchange and consistency stages are cryptography only: their process must not pay for torch."""
    keys = _keys(tmp_path / "keys")
    out = subprocess.run([sys.executable, "-c", _LIGHT_STAGES, str(keys)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
