"""Names shared by the ServerApp and the ClientApp: message types, node-config and run-config keys.

Kept free of any Flower import so the CLI can write deployment files without the ``flower`` extra.

One plain round is one exchange (``train.fit``). A secure round is five exchanges that carry fedi2i's
own SecAgg protocol: ``train.secagg_fit`` (local training + the advertise stage), ``train.secagg_share``,
``train.secagg_mask``, ``train.secagg_check`` (the consistency round: survivors sign the survivor set)
and ``train.secagg_unmask``.
"""

from __future__ import annotations

# Message types: Flower routes "<category>.<action>" to the ClientApp function registered for it.
DESCRIBE = "query.describe"
FIT = "train.fit"
SECAGG_FIT = "train.secagg_fit"
SECAGG_SHARE = "train.secagg_share"
SECAGG_MASK = "train.secagg_mask"
SECAGG_CHECK = "train.secagg_check"
SECAGG_UNMASK = "train.secagg_unmask"
EVALUATE = "evaluate.val"
SECAGG_STAGES = (SECAGG_FIT, SECAGG_SHARE, SECAGG_MASK, SECAGG_CHECK, SECAGG_UNMASK)

# Node config: set by each hospital on its own SuperNode (flower-supernode --node-config "...").
NODE_CENTRE = "centre-id"  # the centre this node serves, e.g. "A" (must be a training centre of the config)
NODE_DATA = "data-path"  # folder in the SynthRAD2023 layout holding (at least) this centre's patients
NODE_MAPPING = "centre-mapping"  # optional CSV patient -> centre, for IDs that do not encode the centre
NODE_REQUIRE_SECAGG = "require-secagg"  # optional: true = refuse to send an individual update
NODE_THREADS = "threads"  # optional: torch threads for local training (default: the config's)
NODE_IDENTITY = "identity-key"  # SecAgg: this centre's Ed25519 private key file (fedi2i flower keys)
NODE_FEDERATION_KEYS = "federation-keys"  # SecAgg: the centres' public keys, the hospital's own copy
NODE_KEYS = (NODE_CENTRE, NODE_DATA, NODE_MAPPING, NODE_REQUIRE_SECAGG, NODE_THREADS, NODE_IDENTITY,
             NODE_FEDERATION_KEYS)

# Run config: set by the server side in the app's pyproject.toml ([tool.flwr.app.config]).
RUN_CONFIG_YAML = "fedi2i-config"  # the whole fedi2i config as YAML text (clients read it too)
RUN_DIR = "run-dir"  # where the ServerApp writes checkpoint, history, record, model (server machine)
RUN_POLL = "poll-interval"  # seconds between the ServerApp's polls for replies
RUN_TIMEOUT = "stage-timeout"  # seconds the ServerApp waits for one exchange before counting dropouts
RUN_NODES = "min-nodes"  # nodes to wait for before the first round (0: one per training centre)
RUN_RESUME = "resume"  # continue from run-dir/checkpoint.pt if present

# Record names inside a message's RecordDict.
REC_GLOBAL = "fedi2i.global"  # ArrayRecord: the global model vector
REC_DELTA = "fedi2i.delta"  # ArrayRecord: a client's update (plain rounds only)
REC_ROUND = "fedi2i.round"  # ConfigRecord: round index, learning rate, weight
REC_FIT = "fedi2i.fit"  # ConfigRecord: example count, optimiser steps, mean loss, timings
REC_SECAGG = "fedi2i.secagg"  # ConfigRecord (+ "<name>.arrays" ArrayRecord): one SecAgg message
REC_INFO = "fedi2i.info"  # ConfigRecord: node description / evaluation summary

# Node-local state (Context.state): never leaves the SuperNode.
STATE_CLIENT = "fedi2i.secagg_client"  # ConfigRecord: serialised SecAggClient of the current round
STATE_DELTA = "fedi2i.pending_delta"  # ArrayRecord: this round's self-weighted update, waiting to be masked
