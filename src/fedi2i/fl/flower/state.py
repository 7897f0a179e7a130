"""Serialise a SecAgg client's secret state between the stages of one round.

Flower starts a fresh ClientApp process for every message, so the client of fedi2i's SecAgg protocol
(:class:`fedi2i.fl.secagg.SecAggClient`: X25519 private keys, the self-mask seed, the Shamir shares it
holds, which secrets it already revealed) must survive from one stage's process to the next. It is kept
in the node's ``Context.state``, which Flower keeps on the SuperNode and never sends to the SuperLink.

The encoding walks the client's attributes by type (JSON with base64 for bytes), so a new attribute of a
known type needs no change here, and one of an unknown type fails loudly instead of being dropped.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import numpy as np

from fedi2i.errors import ConfigError
from fedi2i.fl.secagg import IdentityKey, Protections, SecAggClient, SecAggConfig, message_from_dict
from fedi2i.fl.secagg.crypto import KeyPair

FORMAT = "fedi2i.secagg_client/2"
_NOT_STORED = ("identity",)  # the long-term key stays in its file; it is attached again on load


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, KeyPair):
        return {"t": "x25519", "v": base64.b64encode(value.private_bytes).decode()}
    if isinstance(value, SecAggConfig):
        return {"t": "secagg_config", "v": value.model_dump(mode="json")}
    if isinstance(value, Protections):
        return {"t": "protections", "v": dataclasses.asdict(value)}
    if isinstance(value, np.ndarray):
        return {"t": "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "v": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode()}
    if hasattr(value, "to_dict") and hasattr(value, "kind"):  # a SecAgg protocol message
        return {"t": "message", "v": _encode(value.to_dict())}
    if isinstance(value, (set, frozenset)):
        return {"t": type(value).__name__, "v": [_encode(x) for x in sorted(value)]}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [_encode(x) for x in value]}
    if isinstance(value, list):
        return {"t": "list", "v": [_encode(x) for x in value]}
    if isinstance(value, dict):
        return {"t": "dict", "k": [_encode(k) for k in value], "v": [_encode(x) for x in value.values()]}
    raise TypeError(f"cannot serialise a SecAgg client attribute of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    kind, raw = value["t"], value["v"]
    if kind == "bytes":
        return base64.b64decode(raw)
    if kind == "x25519":
        return KeyPair.from_private_bytes(base64.b64decode(raw))
    if kind == "secagg_config":
        return SecAggConfig.model_validate(raw)
    if kind == "protections":
        return Protections(**raw)
    if kind == "ndarray":
        return np.frombuffer(base64.b64decode(raw), dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if kind == "message":
        return message_from_dict(_decode(raw))
    if kind == "set":
        return {_decode(x) for x in raw}
    if kind == "frozenset":
        return frozenset(_decode(x) for x in raw)
    if kind == "tuple":
        return tuple(_decode(x) for x in raw)
    if kind == "list":
        return [_decode(x) for x in raw]
    if kind == "dict":
        return {_decode(k): _decode(x) for k, x in zip(value["k"], raw, strict=True)}
    raise ValueError(f"unknown encoded type {kind!r}")


def dump_client(client: SecAggClient) -> bytes:
    """The client's round state (round secrets included, not its long-term identity key) as bytes, for
    node-local storage only."""
    attrs = {k: _encode(v) for k, v in vars(client).items() if k not in _NOT_STORED}
    return json.dumps({"format": FORMAT, "attrs": attrs}).encode()


def load_client(data: bytes, identity: IdentityKey | None = None) -> SecAggClient:
    """Rebuild a client from :func:`dump_client` output (with its identity key); it continues the round
    where it stopped, or keeps refusing if it refused."""
    raw = json.loads(data.decode())
    if raw.get("format") != FORMAT:
        raise ConfigError(f"node state holds a SecAgg client in format {raw.get('format')!r}, expected "
                          f"{FORMAT!r}: the node runs another fedi2i version than the one that stored it")
    client = SecAggClient.__new__(SecAggClient)
    client.identity = identity
    for key, value in raw["attrs"].items():
        setattr(client, key, _decode(value))
    return client
