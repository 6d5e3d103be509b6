"""The per-request noise: drawn from the request's own seed, so batching never changes a result.

A request's noise depends on nothing but its seed and shape, never on which batch it lands
in, so the same seed, model and observation give the same action alone or in a batch of 256.

Building `Generator(PCG64(seed))` per request cost 17-27 us, nearly all of it SeedSequence
hashing the seed. Instead each thread keeps one PCG64 generator and sets its 128-bit state
straight from the seed: the low 64 bits are the seed itself (so distinct seeds give distinct
states) and the high 64 bits are the seed through SplitMix64's finaliser (so nearby seeds
start far apart). Setting the state costs about 1 us and drawing 20 normals about 1 us.
"""

from __future__ import annotations

import random
import threading

import numpy as np

# Fresh seeds stay below 2**53 so that JSON clients that read numbers as doubles (JavaScript)
# can send them back unchanged to replay a request.
FRESH_SEED_LIMIT = 2**53
SEED_LIMIT = 2**64  # 64 bits is what every wire format carries; the seed is the state's low half
# Fresh seeds need to differ, not to be secret: a Mersenne Twister seeded once from the OS is
# enough, and costs no system call per request (os.urandom was 10 % of a REST request's CPU).
_seed_source = random.Random()
_MASK64 = 2**64 - 1
_INCREMENT = 0xDA3E39CB94B95BDB  # PCG64's stream; any odd constant, fixed so seeds replay
_local = threading.local()


def fresh_seed() -> int:
    return _seed_source.getrandbits(53)


def _splitmix64(value: int) -> int:
    # SplitMix64's output function (Steele, Lea, Flood 2014): a bijection that scatters nearby inputs
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _thread_generator() -> tuple[np.random.Generator, dict, dict]:
    try:
        return _local.generator
    except AttributeError:
        generator = np.random.Generator(np.random.PCG64())
        inner = {"state": 0, "inc": _INCREMENT}
        state = {"bit_generator": "PCG64", "state": inner, "has_uint32": 0, "uinteger": 0}
        _local.generator = (generator, state, inner)
        return _local.generator


def request_noise(
    seed: int, rows: int, num_candidates: int, chunk_shape: int | tuple[int, ...]
) -> np.ndarray:
    """Standard normal float32 noise [rows, num_candidates, *chunk_shape], a function of `seed` alone.

    `chunk_shape` is action_dim, or (H, action_dim) for a chunked model: the values are drawn in
    row-major order either way, so a seed fixes every step of every chunk, and (action_dim,)
    draws exactly the numbers action_dim does.
    """
    generator, state, inner = _thread_generator()
    inner["state"] = (_splitmix64(seed) << 64) | seed
    generator.bit_generator.state = state
    chunk = (chunk_shape,) if isinstance(chunk_shape, (int, np.integer)) else tuple(chunk_shape)
    return generator.standard_normal((rows, num_candidates, *chunk), dtype=np.float32)


def pad_candidates(noise: np.ndarray, num_candidates: int) -> np.ndarray:
    """`noise` [B, K, ...] widened to `num_candidates` >= K by repeating each row's own candidates.

    The copies score exactly like the originals and the graph's argmax keeps the lowest index
    on ties, so the chosen action and its Q are unchanged (bit for bit) by the padding.
    """
    k = noise.shape[1]
    if k == num_candidates:
        return noise
    return noise[:, np.arange(num_candidates) % k]


def stream_seed(base: int, episode: int, step: int) -> int:
    """The `step`-th seed of a session's stream: a function of its base seed, episode and step alone,
    below FRESH_SEED_LIMIT, so a recorded session replays without the server's state."""
    mixed = _splitmix64((base ^ _splitmix64(episode)) & _MASK64)
    return _splitmix64((mixed + step) & _MASK64) % FRESH_SEED_LIMIT
