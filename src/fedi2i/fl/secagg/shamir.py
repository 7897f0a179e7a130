"""Shamir secret sharing over the prime field GF(2^521 - 1).

Secrets are byte strings of at most 64 bytes (SecAgg shares 32-byte values: the self-mask
seed ``b_u`` and the X25519 masking secret key). A share is ``(x, y)`` with ``x`` a non-zero
field element (the holder's slot number) and ``y = f(x)`` for a random polynomial ``f`` of
degree ``t - 1`` with ``f(0) = secret``. Any ``t`` shares reconstruct the secret; fewer reveal
nothing about it.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable, Sequence

PRIME = (1 << 521) - 1
"""The Mersenne prime 2^521 - 1 (larger than any 64-byte secret)."""

_Y_BYTES = 66  # ceil(521 / 8)
_X_BYTES = 4
SHARE_BYTES = _X_BYTES + _Y_BYTES
MAX_SECRET_BYTES = 64


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[tuple[int, int]]:
    """Share ``secret`` among the holders with x-coordinates ``xs`` (distinct, in [1, 2^32)).

    Returns ``[(x, f(x)) for x in xs]``.
    """
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"secret of {len(secret)} bytes exceeds {MAX_SECRET_BYTES}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (number of holders)")
    if len(set(xs)) != len(xs) or any(not 0 < x < (1 << 32) for x in xs):
        raise ValueError("share x-coordinates must be distinct and in [1, 2^32)")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        acc = 0
        for a in reversed(coeffs):  # Horner
            acc = (acc * x + a) % PRIME
        shares.append((x, acc))
    return shares


@functools.lru_cache(maxsize=64)
def _inverse_denominators(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``1 / prod_{j != i} (x_i - x_j)`` for each base point (cached: a round reuses one holder set)."""
    out = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den = den * (xi - xj) % PRIME
        out.append(pow(den, -1, PRIME))
    return tuple(out)


def _lagrange_at(points: Sequence[tuple[int, int]], at: int) -> int:
    """Evaluate at ``at`` the polynomial through ``points`` (distinct x); O(t) after the cached set-up."""
    xs = tuple(x for x, _ in points)
    inv = _inverse_denominators(xs)
    diffs = [(at - x) % PRIME for x in xs]
    prefix = [1]
    for d in diffs:
        prefix.append(prefix[-1] * d % PRIME)
    suffix = 1
    total = 0
    for i in range(len(xs) - 1, -1, -1):
        total = (total + points[i][1] * prefix[i] % PRIME * suffix % PRIME * inv[i]) % PRIME
        suffix = suffix * diffs[i] % PRIME
    return total


def combine(shares: Iterable[tuple[int, int]], threshold: int, secret_len: int, *, check_all: bool = True) -> bytes:
    """Reconstruct a ``secret_len``-byte secret from at least ``threshold`` shares.

    The first ``threshold`` shares (sorted by x) are interpolated and, with ``check_all``, every further
    share is checked to lie on the same polynomial: with more than ``t`` shares a corrupted one is caught
    (with exactly ``t`` no share check is possible; SecAgg then checks the secret against a commitment).
    ``check_all=False`` uses exactly ``t`` shares and trusts them (the unprotected behaviour, kept for
    the audit's demonstration). Raises ``ValueError`` when shares are missing or inconsistent.
    """
    pts = sorted(dict(shares).items())  # dedupe by x
    if len(pts) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(pts)}")
    base = pts[:threshold]
    value = _lagrange_at(base, 0)
    if check_all:
        bad = [x for x, y in pts[threshold:] if _lagrange_at(base, x) != y]
        if bad:
            raise ValueError(
                f"shares are inconsistent: {len(bad)} of {len(pts)} do not lie on the polynomial of the "
                "others (a share was corrupted)"
            )
    if value >= 1 << (8 * secret_len):
        raise ValueError("reconstructed value does not fit the secret size (corrupted shares)")
    return value.to_bytes(secret_len, "big")


def encode_share(share: tuple[int, int]) -> bytes:
    """Fixed-size encoding: 4-byte big-endian x, 66-byte big-endian y."""
    x, y = share
    return x.to_bytes(_X_BYTES, "big") + y.to_bytes(_Y_BYTES, "big")


def decode_share(data: bytes) -> tuple[int, int]:
    """Inverse of :func:`encode_share`."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    x = int.from_bytes(data[:_X_BYTES], "big")
    y = int.from_bytes(data[_X_BYTES:], "big")
    if x == 0 or y >= PRIME:
        raise ValueError("malformed share")
    return x, y
