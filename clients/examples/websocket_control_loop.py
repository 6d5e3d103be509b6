"""A minimal control loop over the WebSocket (one persistent connection: the lowest latency).

    python clients/examples/websocket_control_loop.py --url ws://127.0.0.1:8000 --model cube-single --steps 100

The endpoint speaks openpi's protocol, so ``openpi_client.websocket_client_policy`` works too.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clients import RemotePolicy, WebSocketPolicyClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="default: the server's default model")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hz", type=float, default=20.0, help="control rate")
    args = parser.parse_args()

    with WebSocketPolicyClient(args.url, args.model) as client:
        policy = RemotePolicy(client, control_period=1.0 / args.hz)
        rng = np.random.default_rng(0)
        next_tick = time.perf_counter()
        for step in range(args.steps):
            observation = rng.standard_normal(policy.metadata.obs_dim)  # your robot's sensors here
            action = policy(observation, seed=step)  # a seed makes the step replayable
            q_value = policy.last_answer.q_values[0] if policy.last_answer else float("nan")
            print("action", np.round(action, 3).tolist(), "q", round(float(q_value), 3))
            next_tick += 1.0 / args.hz
            time.sleep(max(next_tick - time.perf_counter(), 0.0))
    print(f"steps={policy.steps} misses={policy.misses}")


if __name__ == "__main__":
    main()
