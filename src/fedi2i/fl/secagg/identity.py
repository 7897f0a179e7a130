"""Long-term Ed25519 identity keys of the centres, and what SecAgg signs with them.

A server that routes every message can substitute keys, show different clients different survivor sets
or pick the SecAgg+ graph (Bonawitz et al. 2017, section 6). Each centre therefore holds a long-term
Ed25519 key whose public half the other centres know from the federation's set-up (exchanged out of band,
listed in ``secagg.identity_keys``). A client signs its advertised round keys and, in the consistency
round, the survivor set; a peer verifies with the listed public key, never with one the server sends.

Files: ``<centre>.key`` holds the private key (PKCS#8 PEM, mode 0600, stays on the centre's machine),
``federation-keys.yaml`` the public keys of every centre (hex), to be copied to every centre.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from fedi2i.errors import ConfigError

PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
KEYS_FILE = "federation-keys.yaml"
LABEL_ADVERTISE = b"fedi2i/secagg/v1/advertise"
LABEL_SURVIVORS = b"fedi2i/secagg/v1/survivors"
LABEL_GRAPH = b"fedi2i/secagg/v1/graph-from-keys"
LABEL_COMMIT = b"fedi2i/secagg/v1/self-mask-commitment"


class IdentityKey:
    """A centre's Ed25519 signing key (private half; never leaves the centre)."""

    __slots__ = ("private", "public_bytes")

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self.private = private if private is not None else Ed25519PrivateKey.generate()
        self.public_bytes = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def to_pem(self) -> bytes:
        return self.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @classmethod
    def from_pem(cls, data: bytes, source: str = "identity key") -> IdentityKey:
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{source} holds a {type(key).__name__}, not an Ed25519 key; "
                              "create one with `fedi2i flower keys`")
        return cls(key)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public``'s Ed25519 signature of ``message``."""
    if len(public) != PUBLIC_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------- what is signed
def frame(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two different part lists give the same bytes."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def advertise_message(setup_digest: bytes, client_id: str, c_public: bytes, s_public: bytes,
                      b_commit: bytes) -> bytes:
    """What a client signs in the advertise stage: its round keys, bound to the round's set-up."""
    return frame(LABEL_ADVERTISE, setup_digest, client_id.encode(), c_public, s_public, b_commit)


def survivors_message(setup_digest: bytes, survivors: Iterable[str]) -> bytes:
    """What a survivor signs in the consistency round: the set U3 of this round."""
    return frame(LABEL_SURVIVORS, setup_digest, *(c.encode() for c in sorted(survivors)))


def self_mask_commitment(round_id: bytes, client_id: str, b_seed: bytes) -> bytes:
    """Hash of the self-mask seed, signed with the keys: the server checks the seed it rebuilds against it,
    so a corrupted share is caught even when exactly ``t`` shares arrived."""
    return hashlib.sha256(frame(LABEL_COMMIT, round_id, client_id.encode(), b_seed)).digest()


def graph_seed_from_keys(setup_digest: bytes, adverts: Mapping[str, tuple[bytes, bytes, bytes]]) -> bytes:
    """SecAgg+ graph seed from every advertised key of the round (client id -> (c, s, commitment)): each
    client contributes fresh randomness, so the server cannot pick the seed."""
    parts = [LABEL_GRAPH, setup_digest]
    for cid in sorted(adverts):
        parts += [cid.encode(), *adverts[cid]]
    return hashlib.sha256(frame(*parts)).digest()


# ---------------------------------------------------------------------------- key files
def generate_identities(client_ids: Iterable[str]) -> dict[str, IdentityKey]:
    """In-memory identity keys (the in-process engine, tests, benchmarks)."""
    return {cid: IdentityKey() for cid in client_ids}


def directory_of(identities: Mapping[str, IdentityKey]) -> dict[str, bytes]:
    """Public keys of a set of identities: what every centre must know of the others."""
    return {cid: key.public_bytes for cid, key in identities.items()}


def parse_directory(keys: Mapping[str, str], source: str) -> dict[str, bytes]:
    """``{centre: hex public key}`` (config or ``federation-keys.yaml``) -> raw public keys."""
    out: dict[str, bytes] = {}
    for cid, text in keys.items():
        try:
            raw = bytes.fromhex(str(text))
        except ValueError:
            raw = b""
        if len(raw) != PUBLIC_BYTES:
            raise ConfigError(f"{source}: the key of centre {cid} is not a 64-digit hex Ed25519 public key")
        out[str(cid)] = raw
    return out


def write_identities(out_dir: Path, centres: Iterable[str]) -> dict[str, str]:
    """Write ``<centre>.key`` (mode 0600) for each centre and ``federation-keys.yaml``; returns the
    public keys as hex. Refuses to overwrite an existing private key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    public: dict[str, str] = {}
    for centre in centres:
        path = out_dir / f"{centre}.key"
        if path.exists():
            raise ConfigError(f"{path} exists; remove it first (a centre's identity key is not replaced silently)")
        key = IdentityKey()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.to_pem())
        public[str(centre)] = key.public_bytes.hex()
    (out_dir / KEYS_FILE).write_text(yaml.safe_dump(public, sort_keys=True), encoding="utf-8")
    return public


def load_identity(path: Path) -> IdentityKey:
    """A centre's private identity key from its PEM file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"identity key file {path} not found; create it with `fedi2i flower keys`")
    return IdentityKey.from_pem(path.read_bytes(), source=str(path))


def load_directory(path: Path) -> dict[str, bytes]:
    """The federation's public keys from a ``federation-keys.yaml`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"federation key list {path} not found; copy the {KEYS_FILE} written by "
                          "`fedi2i flower keys`")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must map each centre to its hex public key")
    return parse_directory(raw, str(path))
