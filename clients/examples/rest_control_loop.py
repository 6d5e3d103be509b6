"""A minimal control loop over REST: read a sensor, ask the server, act; at a fixed rate.

    python clients/examples/rest_control_loop.py --url http://127.0.0.1:8000 --model cube-single --steps 100

Replace ``read_observation`` and ``apply_action`` with your robot's I/O.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clients import PolicyClient, RemotePolicy


def read_observation(rng: np.random.Generator, obs_dim: int) -> np.ndarray:
    return rng.standard_normal(obs_dim).astype(np.float32)  # stand-in for the robot's sensors


def apply_action(action: np.ndarray) -> None:
    print("action", np.round(action, 3).tolist())  # stand-in for the robot's actuators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="default: the server's default model")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hz", type=float, default=20.0, help="control rate")
    args = parser.parse_args()

    with PolicyClient(args.url, args.model) as client:
        # A late answer (over one control period) repeats the last action and counts a miss.
        policy = RemotePolicy(client, control_period=1.0 / args.hz)
        rng = np.random.default_rng(0)
        next_tick = time.perf_counter()
        for _ in range(args.steps):
            apply_action(policy(read_observation(rng, policy.metadata.obs_dim)))
            next_tick += 1.0 / args.hz
            time.sleep(max(next_tick - time.perf_counter(), 0.0))
    print(f"steps={policy.steps} misses={policy.misses}")


if __name__ == "__main__":
    main()
