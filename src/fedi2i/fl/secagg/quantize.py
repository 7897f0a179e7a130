"""Stochastic quantisation into the ring ``Z_{2^m}`` and dequantisation of sums.

Encoding of one client (``c`` = clip, ``k`` = quantisation bits)::

    s = (2^k - 1) / (2c)
    y = (clip(x, -c, c) + c) * s            in [0, 2^k - 1]
    q = floor(y + u),  u ~ U[0, 1)          (stochastic rounding, E[q] = y, |q - y| < 1)

Decoding the sum ``Q = sum_u q_u`` of ``n_s`` clients: ``Q / s - n_s * c``.

Error bound, per coordinate, for a sum of ``n`` clients with inputs inside ``[-c, c]``:
``|decoded - sum x| < n * step`` with ``step = 2c / (2^k - 1)``. Inputs outside ``[-c, c]``
additionally lose ``|x| - c`` to clipping. No wrap-around as long as ``n (2^k - 1) < 2^m``
(:meth:`SecAggConfig.quant_bits_for` enforces it).

The dither ``u`` comes from a ChaCha20 keystream keyed by a per-client rounding key, so the
quantised values (and therefore the aggregate) are a deterministic function of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedi2i.errors import UpdateRejected

from .crypto import CHUNK, Keystream, apply_masks

_TWO_M32 = 2.0**-32


def scale_for(clip: float, quant_bits: int) -> float:
    """Levels per unit: ``s = (2^k - 1) / (2c)``."""
    return float((1 << quant_bits) - 1) / (2.0 * clip)


def _as_flat_float(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr).reshape(-1)


def quantize_and_mask(
    x: np.ndarray,
    clip: float,
    quant_bits: int,
    dither_key: bytes,
    mask_keys: Sequence[bytes] = (),
    mask_signs: Sequence[int] = (),
    modulus_bits: int = 32,
) -> np.ndarray:
    """Quantise ``x`` and add ``sum_i sign_i PRG(key_i)`` in one pass; returns uint32 in Z_2^m.

    With no mask keys this is plain quantisation (levels in ``[0, 2^k - 1]``).
    Raises :class:`~fedi2i.errors.UpdateRejected` on NaN/Inf input.

    Per chunk (cache-resident): ``v = x s + c s + u`` in float64, then ``clip(v, 0, 2^k - 1)``
    and truncation. Clamping after the dither is exactly ``floor(clip(x) s + c s + u)`` capped
    at ``2^k - 1``: below ``-c`` both give 0 (``v < 1``), above ``c`` both give ``2^k - 1``;
    the cap also absorbs float round-off that could push ``v`` to ``2^k``.
    """
    flat = _as_flat_float(x)
    n = flat.shape[0]
    s = scale_for(clip, quant_bits)
    offset = clip * s
    top = float((1 << quant_bits) - 1)
    out = np.empty(n, dtype=np.uint32)
    ybuf = np.empty(min(n, CHUNK), dtype=np.float64)
    dbuf = np.empty(min(n, CHUNK), dtype=np.float64)
    rbuf = np.empty(min(n, CHUNK), dtype=np.uint32)
    dither = Keystream(dither_key)
    is64 = flat.dtype == np.float64

    def fill(start: int, stop: int, oc: np.ndarray) -> None:
        m = stop - start
        xc = flat[start:stop]
        y = ybuf[:m]
        if is64:
            np.multiply(xc, s, out=y)
        else:  # float32 -> float64: a plain copy is cheaper than a mixed-type ufunc
            np.copyto(y, xc)
            np.multiply(y, s, out=y)
        np.add(y, offset, out=y)
        d = dbuf[:m]
        np.copyto(d, dither.read_into(rbuf[:m]))
        np.multiply(d, _TWO_M32, out=d)  # u ~ U[0, 1) with 32-bit resolution
        np.add(y, d, out=y)
        # the sum of the chunk is finite unless some input is NaN/Inf (or astronomically large)
        if not math.isfinite(np.add.reduce(y)) and not np.isfinite(xc).all():
            raise UpdateRejected("secure aggregation input contains NaN or Inf values")
        np.clip(y, 0.0, top, out=y)
        np.copyto(oc, y, casting="unsafe")  # y >= 0: truncation toward zero is floor

    apply_masks(out, list(mask_keys), list(mask_signs), fill=fill)
    if modulus_bits < 32:
        np.bitwise_and(out, np.uint32((1 << modulus_bits) - 1), out=out)
    return out


def quantize(x: np.ndarray, clip: float, quant_bits: int, dither_key: bytes) -> np.ndarray:
    """Stochastically quantise ``x`` to uint32 levels in ``[0, 2^k - 1]`` (flattened)."""
    return quantize_and_mask(x, clip, quant_bits, dither_key)


def dequantize_sum(total: np.ndarray, n_terms: int, clip: float, quant_bits: int) -> np.ndarray:
    """Decode the sum of ``n_terms`` quantised vectors to float64: ``Q / s - n_terms * c``."""
    s = scale_for(clip, quant_bits)
    out = total.astype(np.float64)
    out /= s
    out -= n_terms * clip
    return out
