"""The whole product path: train -> export -> serve -> mfql-rollout, against mfql-eval on the checkpoint.

The tiny model is compared request by request: mfql-rollout's loop drives the real env with
the server's answers, and mfql-eval's loop runs the checkpoint on the noise the server draws
for the same request seeds, so both must see the same observations and take the same
actions. A chunked model (action horizon 3) is compared the same way: both sides execute
each chunk open-loop for replan_every steps, so they ask at the same steps and must get
the same chunks. The embedded default model, which succeeds on most episodes, is compared
by success rate.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.connect import open_client
from clients.remote_policy import RemotePolicy
from clients.rollout import make_env, run_episodes
from server.noise import request_noise
from server.settings import EMBEDDED_REPOSITORY
from tests.clients.live_server import running_server
from training.evaluate import evaluate_policy
from training.inference import ServingPolicy, load_serving_policy

ROOT = Path(__file__).resolve().parents[2]
TASK = "cube-single-play-singletask-task2-v0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cli(name: str, module: str, *args: str) -> dict | None:
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", module]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout) if result.stdout.lstrip().startswith("{") else None


def agree(a: dict, b: dict) -> bool:
    """Success rates within 3 standard errors of their difference (pooled binomial estimate)."""
    p = (a["success_rate"] * a["episodes"] + b["success_rate"] * b["episodes"]) / (
        a["episodes"] + b["episodes"]
    )
    stderr = math.sqrt(max(p * (1 - p), 1e-12) * (1 / a["episodes"] + 1 / b["episodes"]))
    return abs(a["success_rate"] - b["success_rate"]) <= 3 * stderr + 1e-9


class RecordingRemotePolicy(RemotePolicy):
    """mfql-rollout's policy, keeping what it sent and what the server answered, per request."""

    def __init__(self, client, **options) -> None:
        super().__init__(client, **options)
        self.observations, self.seeds, self.chunks = [], [], []

    def __call__(self, observation, seed=None):
        asks = self.needs_request
        action = super().__call__(observation, seed=seed)
        if asks:
            assert self.last_answer.seed == seed, "the server draws the noise of the request's seed"
            self.observations.append(np.array(observation, dtype=np.float32))
            self.seeds.append(seed)
            self.chunks.append(self.last_answer.chunks[0].copy())  # [H, d]
        return action


class ServerNoise:
    """mfql-eval's module on the noise the server drew for each recorded request seed, in order.

    It keeps its own candidates and their scores but hands the env the served action (or
    chunk): float rounding of ONNX vs torch (~1e-7) would otherwise grow through the contact
    dynamics into different episodes. Candidates are compared as flat H * d vectors, the
    way the critic scores a chunk.
    """

    def __init__(self, module: ServingPolicy, seeds: list[int], served_chunks: list[np.ndarray]) -> None:
        self.module, self.seeds, self.served = module, iter(seeds), iter(served_chunks)
        self.action_dim, self.action_horizon = module.action_dim, module.action_horizon
        self.noise_shape = module.noise_shape
        self.observations, self.chunks, self.candidates, self.scores = [], [], [], []

    def __call__(self, observation: torch.Tensor, noise: torch.Tensor):
        rows, k = noise.shape[:2]
        served_noise = torch.from_numpy(request_noise(next(self.seeds), rows, k, self.noise_shape))
        action, q, candidates = self.module(observation, served_noise)
        flat = candidates[0].reshape(k, -1)
        normalised = self.module.normalizer(observation).expand(k, -1)
        self.scores.append(self.module.critic(normalised, flat).mean(dim=0).numpy())
        self.observations.append(observation[0].numpy().copy())
        self.chunks.append(action[0].numpy().reshape(-1).copy())
        self.candidates.append(flat.numpy().copy())
        served = torch.from_numpy(next(self.served)).reshape(action.shape)
        return served, q, candidates


def assert_served_chunks_are_the_best_candidates(replay: ServerNoise, served: list[np.ndarray]) -> None:
    """Each served chunk is mfql-eval's best candidate, or one whose score ties it to 1e-4."""
    exact = 0
    for request, (chunk, local, candidates, scores) in enumerate(
        zip(served, replay.chunks, replay.candidates, replay.scores, strict=True)
    ):
        chunk = chunk.reshape(-1)
        exact += bool(np.abs(chunk - local).max() <= 1e-5)
        matches = np.flatnonzero(np.abs(candidates - chunk).max(axis=1) <= 1e-5)
        assert matches.size, f"request {request}: served {chunk} is none of the candidates {candidates}"
        assert scores[matches].max() >= scores.max() - 1e-4, f"request {request}: {scores} chose {matches}"
    assert exact >= 0.95 * len(served), f"only {exact} of {len(served)} requests chose the same candidate"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``tiny_run(H)``: (run directory, model repository) of a tiny model trained with action
    horizon H and exported as "tiny"; trained once per H, on one shared generated dataset."""
    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    cli(
        "mfql-data", "training.data.cli", "generate", "--env", "cube-single-v0", "--episodes", "3",
        "--episode-length", "60", "--out", str(data / "cube-single-play-v0.npz"), "--no-progress",
    )  # fmt: skip
    trained: dict[int, tuple[Path, Path]] = {}

    def train_and_export(horizon: int) -> tuple[Path, Path]:
        if horizon not in trained:
            run, repository = root / f"run-h{horizon}", root / f"repository-h{horizon}"
            cli(
                "mfql-train", "training.train", "--env", TASK, "--dataset-dir", str(data), "--out", str(run),
                "--policy", "mlp", "--mlp-hidden", "64,64", "--critic-hidden", "64,64", "--steps", "40",
                "--batch-size", "32", "--actor-lr", "3e-3", "--eval-episodes", "0", "--threads", "1",
                "--action-horizon", str(horizon),
            )  # fmt: skip
            export = [str(run), "--out", str(repository / "tiny" / "1"), "--format", "onnx"]
            cli("mfql-export", "exporters.cli", *export)
            trained[horizon] = run, repository
        return trained[horizon]

    return train_and_export


@pytest.mark.parametrize(
    ("horizon", "replan_every"),
    [(1, None), (3, None), (3, 2)],
    ids=["one-action", "chunk-of-3", "chunk-of-3-replan-every-2"],
)
def test_tiny_trained_model_served_takes_the_actions_mfql_eval_computes(tiny_run, horizon, replan_every):
    run, repository = tiny_run(horizon)
    module, checkpoint = load_serving_policy(run)
    k = checkpoint.config.agent_config.num_candidates
    assert module.action_horizon == horizon
    with running_server(repository) as url, open_client(url, "tiny") as client:
        remote = RecordingRemotePolicy(client, replan_every=replan_every)
        env = make_env(TASK)
        try:
            served = run_episodes(remote, env, 2, seed=5)
        finally:
            env.close()
        assert remote.last_answer.num_candidates == k  # both sides default to the trained K
    assert (served["action_horizon"], served["replan_every"]) == (horizon, replan_every or horizon)
    replay = ServerNoise(module, remote.seeds, remote.chunks)
    evaluated = evaluate_policy(replay, TASK, 2, k, seed=5, progress=False, replan_every=replan_every)

    # One request per replan_every steps on both sides, at the same steps.
    assert len(replay.chunks) == len(remote.chunks) == served["requests"] == evaluated["requests"]
    assert (served["requests"] == served["steps"]) == (horizon == 1)  # a chunk serves several steps
    # Same env seeds and actions, same observations; same request noise, same candidates.
    np.testing.assert_array_equal(np.stack(replay.observations), np.stack(remote.observations))
    assert_served_chunks_are_the_best_candidates(replay, remote.chunks)
    spread = np.stack(replay.candidates).std(axis=1).mean()
    assert spread > 0.05, f"the noise must matter: candidates spread only {spread:.4f}"
    for key in ("success_rate", "mean_return", "mean_episode_length"):
        assert served[key] == pytest.approx(evaluated[key]), key


EMBEDDED = sorted(p.parent for p in EMBEDDED_REPOSITORY.glob("*/*/metadata.json"))


@pytest.mark.slow
@pytest.mark.parametrize("bundle", EMBEDDED, ids=[p.parent.name for p in EMBEDDED])
def test_embedded_model_served_reproduces_its_recorded_success_rate(tmp_path, bundle):
    """Each embedded bundle's metadata holds the mfql-eval report of its checkpoint (50 episodes)."""
    metadata = json.loads((bundle / "metadata.json").read_text())
    recorded = metadata["evaluation"]
    repository = tmp_path / "repository"  # a copy: the server's log goes beside the repository
    shutil.copytree(EMBEDDED_REPOSITORY, repository)
    with running_server(repository) as url:
        served = cli(
            "mfql-rollout", "clients.rollout", "--url", url, "--model", metadata["name"],
            "--env", recorded["env"], "--episodes", str(recorded["episodes"]),
        )  # fmt: skip
    assert agree(served, recorded), (served["success_rate"], recorded["success_rate"])
