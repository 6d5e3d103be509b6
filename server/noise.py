"""The per-request noise: drawn from the request's own seed, so batching never changes a result.

A request's noise depends on nothing but its seed and shape, never on which batch it lands
in, so the same seed, model and observation give the same action alone or in a batch of 256.
"""

from __future__ import annotations

import random

import numpy as np

# Fresh seeds stay below 2**53 so that JSON clients that read numbers as doubles (JavaScript)
# can send them back unchanged to replay a request.
FRESH_SEED_LIMIT = 2**53
SEED_LIMIT = 2**64  # PCG64 takes any non-negative integer; 64 bits is what every wire format carries
# Fresh seeds need to differ, not to be secret: a Mersenne Twister seeded once from the OS is
# enough, and costs no system call per request (os.urandom was 10 % of a REST request's CPU).
_seed_source = random.Random()


def fresh_seed() -> int:
    return _seed_source.getrandbits(53)


def request_noise(seed: int, rows: int, num_candidates: int, action_dim: int) -> np.ndarray:
    """Standard normal float32 noise [rows, num_candidates, action_dim] from PCG64(seed)."""
    generator = np.random.Generator(np.random.PCG64(seed))
    return generator.standard_normal((rows, num_candidates, action_dim), dtype=np.float32)


def pad_candidates(noise: np.ndarray, num_candidates: int) -> np.ndarray:
    """`noise` [B, K, A] widened to `num_candidates` >= K by repeating each row's own candidates.

    The copies score exactly like the originals and the graph's argmax keeps the lowest index
    on ties, so the chosen action and its Q are unchanged (bit for bit) by the padding.
    """
    k = noise.shape[1]
    if k == num_candidates:
        return noise
    return noise[:, np.arange(num_candidates) % k]
