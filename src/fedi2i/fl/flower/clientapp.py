"""The Flower ClientApp: a hospital's side of a fedi2i round, run on its SuperNode.

Each message runs in its own process (Flower's default isolation; on a local federation forked from a
pre-started interpreter, :mod:`fedi2i.fl.flower.prestart`), so everything a stage needs comes
from the message, the node config (which centre, where its data is) and the node-local
``Context.state`` (the SecAgg client's secrets and the update waiting to be masked). The work itself is
done by the same objects the in-process engine drives: :class:`fedi2i.fl.client.LocalTrainer` for local
training and :class:`fedi2i.fl.secagg.SecAggClient` for secure aggregation. torch, MONAI and the image
libraries are imported only by the stages that train or evaluate; the SecAgg-only stages (share, mask,
consistency, unmask) stay light, since every message pays its process's imports.

When the server asks for validation in a training message (``evaluate`` in the round record), the node
first scores the global model it received on its validation patients and sends the summary with its
update: one exchange, one process start-up per round.

Message types and record names: :mod:`fedi2i.fl.flower.protocol`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedi2i.config import Config, config_from_dict
from fedi2i.errors import ConfigError
from fedi2i.fl.flower import protocol as P
from fedi2i.fl.flower.codec import put, record_secagg, record_vector, secagg_records, vector_record
from fedi2i.fl.flower.state import dump_client, load_client
from fedi2i.fl.secagg import IdentityKey, SecAggAbort, SecAggClient
from fedi2i.fl.secagg.identity import load_directory, load_identity, parse_directory
from fedi2i.fl.secagg.weighting import round_seed, weighted_input

log = logging.getLogger(__name__)
app = ClientApp()


@dataclass(frozen=True)
class NodeSettings:
    """What a hospital sets on its own SuperNode (``--node-config``)."""

    centre: str
    data_path: Path
    mapping: Path | None = None
    require_secagg: bool = False
    threads: int | None = None
    identity_key: Path | None = None
    federation_keys: Path | None = None

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> "NodeSettings":
        unknown = sorted(set(node_config) - set(P.NODE_KEYS) - {"partition-id", "num-partitions"})
        if unknown:
            raise ConfigError(f"unknown node-config key(s) {unknown}; known keys: {list(P.NODE_KEYS)}")
        missing = [k for k in (P.NODE_CENTRE, P.NODE_DATA) if not node_config.get(k)]
        if missing:
            raise ConfigError(f"the SuperNode's --node-config lacks {missing}; start it with "
                              f'--node-config \'{P.NODE_CENTRE}="A" {P.NODE_DATA}="/path/to/data"\'')
        mapping = node_config.get(P.NODE_MAPPING)
        threads = node_config.get(P.NODE_THREADS)
        identity, keys = node_config.get(P.NODE_IDENTITY), node_config.get(P.NODE_FEDERATION_KEYS)
        return cls(centre=str(node_config[P.NODE_CENTRE]), data_path=Path(str(node_config[P.NODE_DATA])),
                   mapping=Path(str(mapping)) if mapping else None,
                   require_secagg=_as_bool(node_config.get(P.NODE_REQUIRE_SECAGG, False)),
                   threads=int(threads) if threads else None,
                   identity_key=Path(str(identity)) if identity else None,
                   federation_keys=Path(str(keys)) if keys else None)

    def identity(self) -> IdentityKey:
        """This node's long-term SecAgg identity key, from its own file."""
        if self.identity_key is None:
            raise ConfigError(f"node {self.centre} has no {P.NODE_IDENTITY}: secure aggregation needs each SuperNode's "
                              f"own Ed25519 key; create the keys with `fedi2i flower keys` and add "
                              f"{P.NODE_IDENTITY}=\"/path/{self.centre}.key\" {P.NODE_FEDERATION_KEYS}=\"/path/"
                              "federation-keys.yaml\" to --node-config")
        return load_identity(self.identity_key)

    def directory(self, cfg: Config) -> dict[str, bytes]:
        """The centres' public identity keys: the node's own copy (``federation-keys``), else the run
        config's ``secagg.identity_keys`` (sent by the server, so only as trustworthy as the server)."""
        listed = parse_directory(cfg.secagg.identity_keys, "the run config's secagg.identity_keys")
        if self.federation_keys is not None:
            own = load_directory(self.federation_keys)
            differ = sorted(c for c in listed if c in own and own[c] != listed[c])
            if differ:
                raise ConfigError(f"the run config lists other identity keys than this node's {self.federation_keys} "
                                  f"for centre(s) {differ}: the server may be substituting keys; refusing")
            return own
        if not listed:
            raise ConfigError(f"node {self.centre} knows no identity keys of its peers: set {P.NODE_FEDERATION_KEYS} "
                              "to the federation-keys.yaml written by `fedi2i flower keys`")
        log.warning("node %s checks its peers against the identity keys in the run config (sent by the server); "
                    "set %s to the federation's own key list", self.centre, P.NODE_FEDERATION_KEYS)
        return listed


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def run_config_of(context: Context) -> Config:
    """The fedi2i config the server put into the run config (YAML text)."""
    text = context.run_config.get(P.RUN_CONFIG_YAML)
    if not text:
        raise ConfigError(f"the run config has no '{P.RUN_CONFIG_YAML}'; write the app with `fedi2i flower config`")
    return config_from_dict(yaml.safe_load(str(text)) or {}, source="run config")


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), i.e. what spawning and imports cost."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class _Timer:
    """Named wall-clock sections of one stage, and the CPU-seconds its process spent before the handler
    ran (start-up: interpreter, Flower, imports) and in all; reported to the server for the benchmark."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {"startup_cpu_s": time.process_time()}
        age = process_age()
        if age is not None:
            self.times["process_age_s"] = age
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._t
        self._t = now


def _reply(msg: Message, content: RecordDict, timer: _Timer, **extra: Any) -> Message:
    timer.lap("encode_s")
    timer.times["cpu_s"] = time.process_time()
    info = {f"time.{k}": float(v) for k, v in timer.times.items()}
    info.update(extra)
    content[P.REC_INFO] = ConfigRecord(info)
    return Message(content, reply_to=msg)


def _round(msg: Message) -> dict[str, Any]:
    return dict(msg.content[P.REC_ROUND].items())


# ------------------------------------------------------------------ training and evaluation (import torch)
def preload_task_modules() -> None:
    """Import what the training and evaluation stages import lazily (torch, MONAI's U-Net, fedi2i's
    trainer, node data and evaluation): called once by the pre-started ClientApp interpreter
    (:mod:`fedi2i.fl.flower.prestart`) so that its forked tasks do not import them again."""
    import torch  # noqa: F401
    from monai.networks.nets import UNet  # noqa: F401

    import fedi2i.evaluate  # noqa: F401
    import fedi2i.fl.client  # noqa: F401
    import fedi2i.fl.flower.nodedata  # noqa: F401
    import fedi2i.fl.params  # noqa: F401


def warm_up_training() -> None:
    """One local step of a small U-Net on random slices, on one torch thread, in the pre-started
    interpreter: torch's first training step pays about 1.2 CPU-seconds of one-off set-up (lazy imports
    of the optimiser and autograd machinery, kernel selection), whatever the model's size, which its
    forked tasks then do not pay again. Afterwards torch's thread count is back at its default, so a
    forked task starts with the threads a fresh process would (no thread pool was started: forking after
    a multi-threaded torch operation can deadlock); the fork server gives each task fresh random seeds."""
    import torch

    from fedi2i.config import ModelConfig, TrainConfig
    from fedi2i.data.slices import SliceSet
    from fedi2i.fl.client import LocalTrainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n, size = 4, 32
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(n, 1, size, size, generator=gen) for _ in range(2)]
    slices = SliceSet(images[0], images[1], torch.ones(n, 1, size, size), ["warm-up"] * n, torch.arange(n))
    trainer = LocalTrainer("warm-up", slices, ModelConfig(channels=[8, 16], norm="group"), TrainConfig(batch_size=2),
                           seed=0)
    trainer.fit(trainer.spec.flatten(trainer.model.state_dict()), 0, epochs=1)
    torch.set_num_threads(threads)


def _node_torch(context: Context, timer: _Timer) -> tuple[NodeSettings, Config]:
    """Node settings and run config, with torch imported and its threads set (training/evaluation stages)."""
    import torch

    timer.lap("import_s")
    cfg = run_config_of(context)
    node = NodeSettings.from_node_config(dict(context.node_config))
    threads = node.threads or cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    return node, cfg


def _global(msg: Message, numel: int):  # noqa: ANN202 - torch.Tensor, imported lazily
    import torch

    global_vector = torch.from_numpy(record_vector(msg.content[P.REC_GLOBAL], "global model"))
    if global_vector.numel() != numel:
        raise ConfigError(f"the global model has {global_vector.numel()} values, this node's model "
                          f"{numel}: server and node run different model configs")
    return global_vector


def _scores(model, spec, global_vector, centre: str, slices) -> dict[str, float]:  # noqa: ANN001 - torch types
    """The summary of ``global_vector`` on ``slices`` (empty without patients)."""
    from fedi2i.evaluate import evaluate_centres

    if slices is None or not len(slices):
        return {}
    spec.load_into(model, global_vector)
    return dict(evaluate_centres(model, {centre: slices})[centre]["summary"])  # type: ignore[arg-type]


def _fit(msg: Message, context: Context, timer: _Timer):  # noqa: ANN202 - ClientUpdate, imported lazily
    """Local training from the received global model; first its validation when the round asks for it."""
    from fedi2i.fl.client import LocalTrainer
    from fedi2i.fl.flower.nodedata import load_centre

    node, cfg = _node_torch(context, timer)
    data = load_centre(cfg.data, cfg.seed, node.centre, node.data_path, node.mapping)
    slices = data.split("train")
    timer.lap("data_s")
    mu = cfg.federation.fedprox_mu if cfg.federation.strategy == "fedprox" else 0.0
    trainer = LocalTrainer(node.centre, slices, cfg.model, cfg.train, cfg.seed, fedprox_mu=mu, dp=cfg.dp,
                           reproducible=cfg.reproducible_secrets)
    settings = _round(msg)
    global_vector = _global(msg, trainer.spec.numel)
    val: dict[str, float] = {}
    if settings.get("evaluate"):
        val = _scores(trainer.model, trainer.spec, global_vector, node.centre, data.split("val"))
        timer.lap("eval_s")
    update = trainer.fit(global_vector, int(settings["round"]), lr=float(settings["lr"]))
    timer.lap("train_s")
    return node, cfg, update, val


def _fit_record(update, val: dict[str, float]) -> ConfigRecord:  # noqa: ANN001 - ClientUpdate
    return ConfigRecord({"cid": update.cid, "num_examples": int(update.num_examples), "steps": int(update.steps),
                         "mean_loss": float(update.mean_loss), **{f"val.{k}": float(v) for k, v in val.items()}})


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Which centre this node serves, checked against the run's config before the first round."""
    timer = _Timer()
    cfg = run_config_of(context)
    node = NodeSettings.from_node_config(dict(context.node_config))
    if node.centre not in cfg.data.train_centres:
        raise ConfigError(f"node centre {node.centre!r} is not a training centre of this run "
                          f"({cfg.data.train_centres})")
    if not node.data_path.is_dir():
        raise ConfigError(f"the node's {P.NODE_DATA} {node.data_path} is not a folder")
    return _reply(msg, RecordDict(), timer, centre=node.centre, require_secagg=node.require_secagg)


@app.train("fit")
def fit(msg: Message, context: Context) -> Message:
    """Plain round: train from the global model and send the update (the server sees it)."""
    timer = _Timer()
    node = NodeSettings.from_node_config(dict(context.node_config))
    if node.require_secagg:
        raise ConfigError(f"node {node.centre} is set to {P.NODE_REQUIRE_SECAGG}=true: it sends its update "
                          "only through secure aggregation (enable secagg in the run config)")
    _, _, update, val = _fit(msg, context, timer)
    content = RecordDict({P.REC_DELTA: vector_record(update.delta), P.REC_FIT: _fit_record(update, val)})
    return _reply(msg, content, timer)


# ------------------------------------------------------------------ secure aggregation stages
def _secagg_reply(msg: Message, protocol_message: Any, timer: _Timer) -> Message:
    """A SecAgg stage's answer: the protocol message alone, in the SecAgg record."""
    return _reply(msg, put(RecordDict(), secagg_records(protocol_message, P.REC_SECAGG)), timer)


def _save_client(context: Context, client: SecAggClient) -> None:
    context.state[P.STATE_CLIENT] = ConfigRecord({"data": dump_client(client)})


def _load_client(context: Context) -> SecAggClient:
    if P.STATE_CLIENT not in context.state:
        raise ConfigError("no SecAgg client state on this node: the round's first stage did not run here")
    node = NodeSettings.from_node_config(dict(context.node_config))
    return load_client(bytes(context.state[P.STATE_CLIENT]["data"]), node.identity())


def _answer(context: Context, client: SecAggClient, method: str, *args: Any) -> Any:
    """Run one SecAgg stage; a refusal or abort is stored before it is raised, so the node keeps refusing
    whatever the server asks next in this round."""
    try:
        return getattr(client, method)(*args)
    except SecAggAbort:
        _save_client(context, client)
        raise


@app.train("secagg_fit")
def secagg_fit(msg: Message, context: Context) -> Message:
    """Stage 0: train, keep the self-weighted update on the node, answer the SecAgg setup with signed keys."""
    timer = _Timer()
    node, cfg, update, val = _fit(msg, context, timer)
    settings = _round(msg)
    identity = node.identity()
    directory = node.directory(cfg)
    if directory.get(node.centre) != identity.public_bytes:
        raise ConfigError(f"the identity key in {node.identity_key} is not the one the federation lists for centre "
                          f"{node.centre}; use this centre's own key file")
    seed = round_seed(cfg.seed, int(settings["round"])) if cfg.reproducible_secrets else None
    client = SecAggClient(cfg.secagg, node.centre, None, identity=identity, directory=directory, rounding_seed=seed)
    keys = _answer(context, client, "advertise_keys", record_secagg(msg.content, P.REC_SECAGG))
    # the node weights itself by its own example count: the server never sends a weight
    context.state[P.STATE_DELTA] = vector_record(weighted_input(update.delta.numpy(), update.num_examples, cfg.secagg))
    _save_client(context, client)
    content = put(RecordDict({P.REC_FIT: _fit_record(update, val)}), secagg_records(keys, P.REC_SECAGG))
    return _reply(msg, content, timer)


def _light_stage(msg: Message, context: Context, method: str) -> Message:
    """A stage that needs only the stored client: answer the request, store the client, reply."""
    timer = _Timer()
    client = _load_client(context)
    reply = _answer(context, client, method, record_secagg(msg.content, P.REC_SECAGG))
    _save_client(context, client)
    return _secagg_reply(msg, reply, timer)


@app.train("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    """Stage 1: check the signed keys, Shamir-share the self-mask seed and masking key to each neighbour."""
    return _light_stage(msg, context, "share_keys")


@app.train("secagg_mask")
def secagg_mask(msg: Message, context: Context) -> Message:
    """Stage 2: upload the self-weighted, quantised and masked update (the only form it leaves the node in)."""
    timer = _Timer()
    client = _load_client(context)
    if P.STATE_DELTA not in context.state:
        raise ConfigError("no pending update on this node: the round's training stage did not run here")
    vector = record_vector(context.state[P.STATE_DELTA], "pending update")
    reply = _answer(context, client, "masked_input", record_secagg(msg.content, P.REC_SECAGG), vector)
    timer.lap("mask_s")
    del context.state[P.STATE_DELTA]
    _save_client(context, client)
    return _secagg_reply(msg, reply, timer)


@app.train("secagg_check")
def secagg_check(msg: Message, context: Context) -> Message:
    """Stage 3, the consistency round: sign the survivor set the server announces."""
    return _light_stage(msg, context, "consistency")


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Stage 4: after t signatures on the same survivor set, reveal the shares that remove the masks
    (never both shares of one peer)."""
    timer = _Timer()
    client = _load_client(context)
    reply = _answer(context, client, "unmask", record_secagg(msg.content, P.REC_SECAGG))
    del context.state[P.STATE_CLIENT]  # the round is over: its secrets are not needed any more
    return _secagg_reply(msg, reply, timer)


# ------------------------------------------------------------------ federated evaluation
@app.evaluate("val")
def evaluate_val(msg: Message, context: Context) -> Message:
    """Synthesis quality of the global model on this centre's validation (or, when the round record says
    ``split=test``, test) patients, summary only: nodes not sampled in a round, the last round's result
    and the final test figures."""
    timer = _Timer()
    from fedi2i.fl.flower.nodedata import load_centre
    from fedi2i.fl.params import ParamSpec
    from fedi2i.models import build_unet

    node, cfg = _node_torch(context, timer)
    split = str(_round(msg).get("split", "val")) if P.REC_ROUND in msg.content else "val"
    slices = load_centre(cfg.data, cfg.seed, node.centre, node.data_path, node.mapping).split(split)
    timer.lap("data_s")
    model = build_unet(cfg.model)
    spec = ParamSpec.from_module(model)
    summary = _scores(model, spec, _global(msg, spec.numel), node.centre, slices)
    timer.lap("eval_s")
    return _reply(msg, RecordDict({P.REC_FIT: ConfigRecord({f"val.{k}": float(v) for k, v in summary.items()})}),
                  timer)


__all__ = ["NodeSettings", "app", "preload_task_modules", "run_config_of", "warm_up_training"]
