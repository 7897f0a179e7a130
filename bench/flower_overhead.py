"""Round time of a Flower deployment vs the in-process engine, and where the Flower time goes.

Quick preset model and slices (64x64, U-Net 16-32-64-128) on the procedural phantom (no download), 4
training centres, FedAvg, 2 rounds. Three runtimes, same seed, same rounds, measured side by side:

1. the in-process engine (``fedi2i.training.train``);
2. the Flower apps run in one process (``InProcessTransport``): every message still goes through
   protobuf and every stage reloads the node's data and rebuilds its trainer, as a ClientApp process does;
3. a real Flower deployment on 127.0.0.1 (1 SuperLink + 4 SuperNodes, ``flwr run``), twice: with Flower's
   default of one fresh ``flwr-clientapp`` process per message, and with the tasks forked from one
   pre-started interpreter that imported Flower, torch and MONAI once (``fedi2i.fl.flower.prestart``; the
   default of ``LocalFederation``). The pre-started interpreter's own CPU (its imports, paid once per
   federation, and the forking) is printed and added to the per-round CPU amortised over the rounds run.

The breakdown of (3) comes from the timings each ClientApp reports: process start-up (spawning the
process and importing Flower, until fedi2i's handler runs), imports (torch, MONAI, fedi2i's training
code), data loading, training, serialisation; the server's aggregation; the rest of the exchange's wall
time is Flower's scheduling and polling. ``--secagg`` also runs SecAgg in (1) and (3). Each message
stage's start-up CPU-seconds (the ClientApp process's CPU time before fedi2i's handler runs: interpreter,
Flower, fedi2i's module imports) and the handler's own CPU-seconds are printed stage by stage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import mean

import torch
import yaml
from _common import quick_phantom

from fedi2i.fl.flower import protocol as P
from fedi2i.fl.flower.codec import vector_record
from fedi2i.fl.flower.deploy import run_local
from fedi2i.fl.flower.inprocess import InProcessTransport, wire
from fedi2i.fl.flower.rounds import ServerRounds
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.round_loop import load_global
from fedi2i.models import build_unet
from fedi2i.training import RunOptions, train
from flwr.app import RecordDict


def engine_rounds(cfg, data, out: Path) -> tuple[list[float], float]:
    """Round wall times of the in-process runtime, and its CPU-seconds per round (set-up included)."""
    marks = [time.process_time()]
    history = train(cfg, out, data, RunOptions(on_round=lambda done, entry: marks.append(time.process_time()),
                                               native_eval=False)).run.history
    return [h["round_seconds"] for h in history], (marks[-1] - marks[0]) / len(history)


def deployment_cpu(history: list[dict]) -> float:
    """CPU-seconds per round of every ClientApp process (start-up included), summed over clients and stages."""
    total = sum(c.get("cpu_s", 0.0) for entry in history for stage in entry["flower"].values()
                if isinstance(stage, dict) for c in stage["clients"].values())
    return total / len(history)


def inprocess_rounds(cfg, root: Path, out: Path) -> list[float]:
    nodes = {i + 1: {P.NODE_CENTRE: c, P.NODE_DATA: str(root)} for i, c in enumerate(cfg.data.train_centres)}
    if cfg.secagg.enabled:  # each node signs with its own identity key
        from fedi2i.fl.secagg.identity import KEYS_FILE, write_identities

        keys = out / "identity"
        if not (keys / KEYS_FILE).exists():
            write_identities(keys, cfg.data.train_centres)
        for i, c in enumerate(cfg.data.train_centres):
            nodes[i + 1].update({P.NODE_IDENTITY: str(keys / f"{c}.key"), P.NODE_FEDERATION_KEYS: str(keys / KEYS_FILE)})
    transport = InProcessTransport(nodes, {P.RUN_CONFIG_YAML: yaml.safe_dump(cfg.model_dump(mode="json"))})
    return [h["round_seconds"] for h in ServerRounds(cfg, out, transport, poll=0.0).run().history]


def breakdown(history: list[dict]) -> dict[str, float]:
    """Mean per round: exchange wall time, and per-client sections averaged over the clients."""
    parts: dict[str, list[float]] = {}
    for entry in history:
        sums: dict[str, float] = {"exchanges_wall": 0.0, "aggregation": entry["flower"].get("aggregate_s", 0.0)}
        for stage in (v for v in entry["flower"].values() if isinstance(v, dict)):
            sums["exchanges_wall"] += stage["seconds"]
            if "server_s" in stage:
                sums["server_secagg"] = sums.get("server_secagg", 0.0) + stage["server_s"]
            clients = list(stage["clients"].values())
            for key in ("process_age_s", "import_s", "data_s", "train_s", "mask_s", "encode_s"):
                values = [c[key] for c in clients if key in c]
                if values:
                    sums[key] = sums.get(key, 0.0) + mean(values)
        for key, value in sums.items():
            parts.setdefault(key, []).append(value)
    return {k: mean(v) for k, v in parts.items()}


def stage_cpu(history: list[dict]) -> dict[str, dict[str, float]]:
    """Per message stage, mean over rounds and clients: start-up CPU-s, handler CPU-s, import wall-s."""
    rows: dict[str, dict[str, list[float]]] = {}
    for entry in history:
        for stage, timing in entry["flower"].items():
            if not isinstance(timing, dict):
                continue
            for client in timing["clients"].values():
                if "startup_cpu_s" not in client:
                    continue
                row = rows.setdefault(stage, {"startup": [], "handler": [], "imports": []})
                row["startup"].append(client["startup_cpu_s"])
                row["handler"].append(client.get("cpu_s", client["startup_cpu_s"]) - client["startup_cpu_s"])
                row["imports"].append(client.get("import_s", 0.0))
    return {stage: {k: mean(v) for k, v in row.items()} for stage, row in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--secagg", action="store_true", help="also compare a SecAgg round")
    parser.add_argument("--eval-every", type=int, default=0, help="validation cadence (it rides in the "
                        "training message; 0: none, as the issue's baseline was measured)")
    parser.add_argument("--fresh", action="store_true", help="also run the deployment with a fresh ClientApp "
                        "process per message (Flower's default), side by side")
    args = parser.parse_args()
    cfg, data = quick_phantom(overrides={"train.rounds": args.rounds, "federation.eval_every": args.eval_every,
                                         "federation.record_rounds": "none", "train.threads": 1})
    root = Path(cfg.data.root)
    out = Path(tempfile.mkdtemp(prefix="fedi2i-bench-flower-"))
    slices = {c: len(s) for c, s in data.train.items()}
    print(f"quick preset model on the phantom (not the realistic heads): {len(slices)} centres, {slices} training "
          f"slices, {args.rounds} rounds, 1 torch thread per client")
    modes = [("plain", cfg)]
    if args.secagg:
        modes.append(("secagg", cfg.model_copy(update={"secagg": cfg.secagg.model_copy(update={"enabled": True})})))
    for name, mode_cfg in modes:
        # best of two engine runs: the first pays one-off warm-up costs the deployment pays in every process
        eng, eng_cpu = min((engine_rounds(mode_cfg, data, out / f"engine-{name}-{i}") for i in range(2)),
                           key=lambda r: mean(r[0]))
        inproc = inprocess_rounds(mode_cfg, root, out / f"inproc-{name}") if name == "plain" else None
        print(f"\n== {name}: mean round time over {args.rounds} rounds")
        print(f"in-process engine        {mean(eng):8.2f} s   CPU {eng_cpu:6.2f} s per round")
        if inproc:
            print(f"Flower apps, in-process  {mean(inproc):8.2f} s   ratio {mean(inproc) / mean(eng):6.2f}")
        for prestart in ([False, True] if args.fresh else [True]):
            res = deployment(mode_cfg, name, root, out, prestart, args.rounds, eng, eng_cpu)
        report(res)
    serialisation(cfg)


def deployment(cfg, name: str, root: Path, out: Path, prestart: bool, rounds: int, eng: list[float],
               eng_cpu: float):  # noqa: ANN201 - LocalRunResult
    """One loopback deployment; prints its round time and CPU-seconds per round against the engine's."""
    kind = "forked" if prestart else "fresh"
    t = time.perf_counter()
    res = run_local(cfg, out / f"flower-{name}-{kind}", data_root=root, workdir=out / f"work-{name}-{kind}",
                    timeout=1800, poll_interval=0.1, prestart=prestart)
    total = time.perf_counter() - t
    fl = [h["round_seconds"] for h in res.history]
    same = torch.equal(res.global_vector, load_global(out / f"engine-{name}-0"))
    label = ("Flower deployment, ClientApp tasks forked from a pre-started interpreter" if prestart
             else "Flower deployment, a fresh ClientApp process per message (Flower's default)")
    print(f"{label}:")
    print(f"  round time {mean(fl):8.2f} s   ratio {mean(fl) / mean(eng):6.2f}   (same final model as the engine: "
          f"{same})")
    fl_cpu = deployment_cpu(res.history)
    print(f"  CPU-seconds per round of the ClientApp tasks {fl_cpu:.2f}   ratio {fl_cpu / eng_cpu:6.2f}   "
          "(ServerApp and SuperNode processes not counted)")
    if res.prestart_cpu_s is not None:
        amortised = fl_cpu + res.prestart_cpu_s / rounds
        print(f"  pre-started interpreter: {res.prestart_cpu_s:.2f} CPU-s in all (imports once, then forking); "
              f"amortised over {rounds} rounds: {amortised:.2f} CPU-s per round   ratio {amortised / eng_cpu:6.2f}")
    print(f"  set-up: federation start {res.startup_seconds:.1f} s, whole `flwr run` {res.flower.seconds:.1f} s "
          f"(ServerApp start-up and node discovery included), total {total:.1f} s")
    print("  CPU-seconds per message, stage by stage (mean over rounds and clients):")
    print(f"    {'stage':22s} {'start-up CPU':>13s} {'handler CPU':>12s} {'of which imports (wall)':>24s}")
    for stage, row in stage_cpu(res.history).items():
        print(f"    {stage:22s} {row['startup']:13.2f} {row['handler']:12.2f} {row['imports']:24.2f}")
    return res


def report(res) -> None:  # noqa: ANN001 - LocalRunResult
    """Where the (last) deployment's round time goes."""
    parts = breakdown(res.history)
    print("where a deployed round's time goes (per round; client sections averaged over the clients):")
    labels = {"exchanges_wall": "exchanges, wall time", "process_age_s": "  ClientApp process start + Flower imports",
              "import_s": "  torch/MONAI/fedi2i imports", "data_s": "  data loading (node's own slices)",
              "train_s": "  local training", "mask_s": "  SecAgg quantise + mask",
              "encode_s": "  building the reply records", "server_secagg": "server SecAgg stages",
              "aggregation": "server aggregation + record"}
    for key, label in labels.items():
        if key in parts:
            print(f"  {label:44s} {parts[key]:8.2f} s")
    clients = [k for k in ("process_age_s", "import_s", "data_s", "train_s", "mask_s", "encode_s") if k in parts]
    rest = parts["exchanges_wall"] - sum(parts[k] for k in clients)
    print(f"  {'  Flower scheduling, polling, transfer (rest)':44s} {rest:8.2f} s")


def serialisation(cfg) -> None:  # noqa: ANN001 - Config
    """What one model vector costs through protobuf and back (a lower bound on a message's transfer)."""
    vec = torch.zeros(ParamSpec.from_module(build_unet(cfg.model)).numel)
    t = time.perf_counter()
    for _ in range(20):
        wire(RecordDict({"v": vector_record(vec)}))
    print(f"\nserialising one model vector ({vec.numel()} float32, {4 * vec.numel() / 1e6:.2f} MB) to protobuf and "
          f"back: {(time.perf_counter() - t) / 20 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
