"""A control loop with Triton's own client (``tritonclient.http``) on mfql's v2 endpoint.

    pip install "tritonclient[http]"
    python clients/examples/triton_client_loop.py --url 127.0.0.1:8000 --model cube-single --steps 100

Nothing mfql-specific is imported: any Open Inference Protocol v2 client works. The
best-of-K count and the seed travel as request parameters.
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as triton


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port, no scheme (Triton's convention)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--num-candidates", type=int, default=4)
    args = parser.parse_args()

    client = triton.InferenceServerClient(url=args.url)
    if not client.is_server_ready():
        raise SystemExit(f"server at {args.url} is not ready")
    metadata = client.get_model_metadata(args.model)
    obs_dim = int(next(t for t in metadata["inputs"] if t["name"] == "observation")["shape"][-1])
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("action", "q_value")]
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        observation = rng.standard_normal((1, obs_dim)).astype(np.float32)  # your robot's sensors here
        request = triton.InferInput("observation", list(observation.shape), "FP32")
        request.set_data_from_numpy(observation, binary_data=False)
        result = client.infer(
            args.model,
            [request],
            outputs=outputs,
            parameters={"num_candidates": args.num_candidates, "seed": step},
        )
        action, q_value = result.as_numpy("action")[0], result.as_numpy("q_value")[0]
        print("action", np.round(action, 3).tolist(), "q", round(float(q_value), 3))
    client.close()


if __name__ == "__main__":
    main()
