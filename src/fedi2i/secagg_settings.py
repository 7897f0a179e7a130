"""Secure aggregation settings and the arithmetic derived from them.

They sit at the bottom of the package, beside the run configuration that embeds them
(:mod:`fedi2i.config`), so the config never imports the protocol (:mod:`fedi2i.fl.secagg`), which builds
on them.

Quantisation (see also ``docs/secagg.md``)
------------------------------------------
Each client clips every coordinate to ``[-c, c]`` and maps it to one of ``2^k`` levels::

    y = (clip(x, -c, c) + c) * s,   s = (2^k - 1) / (2c),   q = floor(y + u),  u ~ U[0, 1)

(stochastic rounding: ``E[q] = y``, ``|q - y| < 1``). Levels live in ``[0, 2^k - 1]``, so the
sum over ``n`` clients is at most ``n (2^k - 1)``; ``k`` is chosen so that
``n (2^k - 1) < 2^(m-1)``: the sum never wraps around the ring ``Z_{2^m}``, and one bit of headroom is
left so that the server's range check of the unmasked sum catches a client that adds ``2^(m-1)`` (or any
large value that wraps) to its upload. The server
dequantises the unmasked sum ``Q`` of ``n_s <= n`` survivors as ``Q / s - n_s c``.

Error bound: for inputs inside ``[-c, c]`` every client's rounding error is below one step
``2c / (2^k - 1)`` per coordinate, so ``|aggregate - true sum| < n * step`` per coordinate
(:meth:`SecAggConfig.error_bound`); the typical error is much smaller (about
``sqrt(n) * step / 2``, as stochastic rounding is unbiased). Coordinates outside ``[-c, c]``
add their clipping error ``|x| - c`` on top of that.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedi2i.errors import ConfigError


class SecAggConfig(BaseModel):
    """Secure aggregation settings (Bonawitz et al. 2017 with SecAgg+ neighbourhoods).

    Attributes:
        enabled: whether the federated engine aggregates through SecAgg.
        clip: clip range ``c``; every input coordinate is clipped to ``[-c, c]`` before
            quantisation. The engine passes example-weighted updates, so choose ``c`` for the
            weighted values.
        modulus_bits: ``m``; masked values live in ``Z_{2^m}`` and travel as uint32
            (4 bytes per parameter), so ``3 <= m <= 32``.
        quant_bits: ``k``; ``2^k`` quantisation levels. ``None`` picks the largest ``k`` with
            ``n (2^k - 1) < 2^(m-1)`` for ``n`` clients; an explicit ``k`` that would overflow for
            the actual ``n`` is rejected with :class:`~fedi2i.errors.ConfigError`.
        threshold: fraction of a neighbourhood that must survive. The Shamir threshold is
            ``t = floor(threshold * size) + 1`` (capped at ``size``): strictly more than that
            fraction. At least 0.5, so ``t`` is always a strict majority, ``2t > size``: this is
            what keeps a server that lies about who dropped out from collecting both the
            self-mask shares and the key shares of one client. Clients also refuse a round whose
            announced threshold is below a strict majority of their neighbourhood, whatever the
            server's config says.
        neighbours: SecAgg+ neighbourhood degree (number of peers each client masks with and
            shares its secrets to). ``None`` or ``0`` (or any value ``>= n - 1``) is the complete
            graph of the original SecAgg. An odd value is rounded up to the next even number
            (the graph is a randomly relabelled ring lattice / Harary graph).
            Bell et al. 2020 show ``O(log n)`` suffices; :func:`suggested_neighbours` gives
            ``2 * ceil(log2 n)``.
        max_weight: example count that maps to FedAvg weight 1. Each client scales its update by
            ``r = min(n_k, max_weight) / max_weight`` (its own count, never a weight the server
            sends) and appends ``r`` to the masked vector; the server divides the two sums. Set it
            at or above the largest centre's number of training slices (a larger count is capped).
        identity_keys: centre -> hex Ed25519 public key, the federation's long-term identity keys
            (``fedi2i flower keys`` writes them). Over Flower a node checks its peers' signatures with
            these (or with its own ``federation-keys`` file); the in-process engine makes its own.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    clip: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    modulus_bits: int = Field(32, ge=3, le=32)
    quant_bits: int | None = Field(None, ge=1, le=31)
    threshold: float = Field(0.5, ge=0.5, le=1.0)
    neighbours: int | None = Field(None, ge=0)
    max_weight: int = Field(10000, ge=1)
    identity_keys: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_bits(self) -> SecAggConfig:
        if self.quant_bits is not None and self.quant_bits > self.modulus_bits - 1:
            raise ValueError(
                f"quant_bits ({self.quant_bits}) must be below modulus_bits "
                f"({self.modulus_bits}): the levels of one client must fit half the ring"
            )
        for cid, key in self.identity_keys.items():
            if len(key) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in key):
                raise ValueError(f"identity_keys.{cid} must be a 64-digit hex Ed25519 public key")
        return self

    # ------------------------------------------------------------------ quantisation
    def max_quant_bits(self, n_clients: int) -> int:
        """Largest ``k`` with ``n (2^k - 1) < 2^(m-1)`` (no wrap-around for ``n`` clients, one bit of
        headroom for the range check)."""
        check_clients(n_clients)
        half = 1 << (self.modulus_bits - 1)
        if n_clients >= half:
            raise ConfigError(
                f"{n_clients} clients cannot be summed in Z_2^{self.modulus_bits} with a bit of "
                "headroom even with 2 levels; raise modulus_bits"
            )
        return ((half - 1) // n_clients + 1).bit_length() - 1

    def sum_bound(self, n_terms: int, n_clients: int) -> int:
        """Largest valid unmasked sum of ``n_terms`` survivors in a round of ``n_clients``:
        ``n_terms (2^k - 1)``. A larger coordinate means a client uploaded something out of range."""
        return n_terms * ((1 << self.quant_bits_for(n_clients)) - 1)

    def quant_bits_for(self, n_clients: int) -> int:
        """The ``k`` used for a round with ``n_clients`` selected clients."""
        kmax = self.max_quant_bits(n_clients)
        if self.quant_bits is None:
            return kmax
        if self.quant_bits > kmax:
            raise ConfigError(
                f"quant_bits={self.quant_bits} overflows Z_2^{self.modulus_bits} for "
                f"{n_clients} clients: n(2^k - 1) must be < 2^(m-1), so k <= {kmax}; lower "
                "quant_bits, raise modulus_bits or leave quant_bits unset"
            )
        return self.quant_bits

    def step(self, n_clients: int) -> float:
        """Quantisation step ``2c / (2^k - 1)`` for a round with ``n_clients``."""
        k = self.quant_bits_for(n_clients)
        return 2.0 * self.clip / float((1 << k) - 1)

    def error_bound(self, n_clients: int) -> float:
        """Per-coordinate bound on ``|aggregate - true sum|`` for inputs inside ``[-c, c]``.

        Each client's stochastic rounding error is below one step ``2c / (2^k - 1)``, so the
        sum over at most ``n_clients`` survivors errs by less than ``n_clients * step``
        (plus float64 round-off, ~1e-16 relative). Inputs outside ``[-c, c]`` are clipped;
        their clipping error is not included.
        """
        return n_clients * self.step(n_clients)

    # ------------------------------------------------------------------ graph / threshold
    def neighbourhood_degree(self, n_clients: int) -> int:
        """Number of peers of each client: ``n - 1`` for the complete graph."""
        check_clients(n_clients)
        full = n_clients - 1
        d = self.neighbours
        if not d or d >= full:
            return full
        d += d % 2
        return min(d, full)

    def threshold_count(self, group_size: int) -> int:
        """Shamir threshold ``t`` for a neighbourhood of ``group_size`` clients (self included).

        ``t = min(size, floor(threshold * size) + 1)``: strictly more than the fraction.
        """
        if group_size < 1:
            raise ConfigError(f"neighbourhood size must be >= 1, got {group_size}")
        t = math.floor(self.threshold * group_size + 1e-9) + 1
        return max(1, min(group_size, t))

    def round_threshold(self, n_clients: int) -> int:
        """The threshold used in a round with ``n_clients``: relative to the neighbourhood."""
        return self.threshold_count(self.neighbourhood_degree(n_clients) + 1)


def check_clients(n_clients: int) -> None:
    if n_clients < 1:
        raise ConfigError(f"secure aggregation needs at least one client, got {n_clients}")
