"""Cryptographic building blocks: X25519, HKDF-SHA256, AES-GCM, and a ChaCha20 PRG.

* Key agreement: X25519 (two key pairs per client: ``c`` to encrypt shares, ``s`` for masks).
* Key derivation: HKDF-SHA256 with the round id as salt and a per-purpose ``info`` label.
* Share transport: AES-256-GCM, random 96-bit nonce, associated data binding round id, sender
  and receiver; a modified ciphertext fails with :class:`ShareAuthenticationError`.
* PRG: ChaCha20 keyed by the full 256-bit seed, keystream read as little-endian uint32 ring
  elements. Masks are added chunk by chunk into the output so the output chunk stays in cache
  while all masks are applied (one pass over memory however many masks there are).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .exceptions import ShareAuthenticationError

KEY_BYTES = 32
NONCE_BYTES = 12
INFO_SHARE = b"fedi2i/secagg/v1/share-encryption"
INFO_MASK = b"fedi2i/secagg/v1/pairwise-mask"

CHUNK = 1 << 15
"""Elements per chunk of the fused mask/quantise loop (128 KiB of uint32: stays in L2)."""

_ZEROS = np.zeros(4 * CHUNK, dtype=np.uint8)
_ZEROS.setflags(write=False)
_CHACHA_NONCE = bytes(16)  # 32-bit counter 0 + 96-bit nonce 0: each key is used for one stream


# ---------------------------------------------------------------------------- key pairs
class KeyPair:
    """An X25519 key pair with raw 32-byte encodings."""

    __slots__ = ("private", "public_bytes")

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self.private = private if private is not None else X25519PrivateKey.generate()
        self.public_bytes = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def private_bytes(self) -> bytes:
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        return cls(X25519PrivateKey.from_private_bytes(data))


def public_key_of(private_bytes: bytes) -> bytes:
    """Raw public key of a raw X25519 private key."""
    return KeyPair.from_private_bytes(private_bytes).public_bytes


def agree(private: X25519PrivateKey, peer_public: bytes, *, salt: bytes, info: bytes) -> bytes:
    """X25519 agreement followed by HKDF-SHA256 to a 32-byte key."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero output: a low-order (malicious) public key
        raise ShareAuthenticationError(f"invalid peer public key: {exc}") from exc
    return hkdf(shared, salt=salt, info=info)


def hkdf(material: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(material)


# ---------------------------------------------------------------------------- AES-GCM
def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM; returns ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes, *, what: str = "ciphertext") -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`ShareAuthenticationError` if tampered."""
    if len(blob) < NONCE_BYTES + 16:
        raise ShareAuthenticationError(f"{what} is truncated ({len(blob)} bytes)")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ShareAuthenticationError(
            f"{what} failed AES-GCM authentication: it was modified in transit or encrypted "
            "under another key; the round is aborted"
        ) from None


# ---------------------------------------------------------------------------- PRG
def _keystream(key: bytes):  # noqa: ANN202 - cryptography's CipherContext
    if len(key) != KEY_BYTES:
        raise ValueError(f"PRG keys are {KEY_BYTES} bytes, got {len(key)}")
    return Cipher(algorithms.ChaCha20(key, _CHACHA_NONCE), mode=None).encryptor()


def prg(key: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint32 ring elements expanded from a 256-bit key (ChaCha20)."""
    out = np.zeros(n, dtype=np.uint32)
    apply_masks(out, [key], [1])
    return out


class Keystream:
    """Sequential uint32 reader over a ChaCha20 keystream (used for rounding dither)."""

    def __init__(self, key: bytes) -> None:
        self._enc = _keystream(key)

    def read_into(self, out: np.ndarray) -> np.ndarray:
        """Fill a contiguous uint32 array (at most :data:`CHUNK` long) with fresh keystream."""
        nbytes = 4 * out.shape[0]
        self._enc.update_into(_ZEROS[:nbytes], out.view(np.uint8))
        return out


ChunkFill = Callable[[int, int, np.ndarray], None]


def apply_masks(
    out: np.ndarray,
    keys: Sequence[bytes],
    signs: Sequence[int],
    *,
    fill: ChunkFill | None = None,
) -> np.ndarray:
    """In place: ``out += sum_i signs[i] * PRG(keys[i])`` modulo 2^32.

    ``out`` is a contiguous 1-D uint32 array. If ``fill`` is given, ``fill(start, stop,
    chunk)`` first writes ``out[start:stop]`` (e.g. quantised values), so quantisation and
    masking run in one cache-friendly pass. The result does not depend on :data:`CHUNK`.
    """
    if out.dtype != np.uint32 or out.ndim != 1 or not out.flags.c_contiguous:
        raise ValueError("apply_masks needs a contiguous 1-D uint32 array")
    if len(keys) != len(signs):
        raise ValueError("one sign per key")
    encs = [_keystream(k) for k in keys]
    n = out.shape[0]
    # +16 elements of slack: update_into may want len(data) + block_size - 1 bytes of room.
    scratch = np.empty(CHUNK + 16, dtype=np.uint32)
    sbytes = scratch.view(np.uint8)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        m = stop - start
        oc = out[start:stop]
        if fill is not None:
            fill(start, stop, oc)
        sc = scratch[:m]
        zb = _ZEROS[: 4 * m]
        for enc, sign in zip(encs, signs):
            enc.update_into(zb, sbytes)
            if sign >= 0:
                np.add(oc, sc, out=oc)
            else:
                np.subtract(oc, sc, out=oc)
    return out
