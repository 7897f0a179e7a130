"""Seeds derived from (seed, round, client, ...): every non-secret random choice of a run comes from here.

A bottom-layer helper: the data, training and attack code all derive their seeds the same way, and none
of them has to import another layer (or its image libraries) for it.
"""

from __future__ import annotations

import numpy as np


def hash_seed(*parts: int) -> int:
    """Stable 32-bit seed from integers (Python's hash() is salted per process)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
