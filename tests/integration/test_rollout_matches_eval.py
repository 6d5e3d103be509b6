"""The whole product path: train -> export -> serve -> mfql-rollout, against mfql-eval on the checkpoint.

The tiny model is compared step by step: mfql-rollout's loop drives the real env with the
server's answers, and mfql-eval's loop runs the checkpoint on the noise the server draws for
the same request seeds, so both must see the same observations and take the same actions.
The embedded default model, which succeeds on most episodes, is compared by success rate.
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
    """mfql-rollout's policy, keeping what it sent and what the server answered."""

    def __init__(self, client) -> None:
        super().__init__(client)
        self.observations, self.seeds, self.actions = [], [], []

    def __call__(self, observation, seed=None):
        action = super().__call__(observation, seed=seed)
        assert self.last_answer.seed == seed, "the server draws the noise of the request's seed"
        self.observations.append(np.array(observation, dtype=np.float32))
        self.seeds.append(seed)
        self.actions.append(np.array(action))
        return action


class ServerNoise:
    """mfql-eval's module on the noise the server drew for each recorded request seed, in order.

    It keeps its own candidates and their scores but hands the env the served action: float
    rounding of ONNX vs torch (~1e-7) would otherwise grow through the contact dynamics into
    different episodes.
    """

    def __init__(self, module: ServingPolicy, seeds: list[int], served_actions: list[np.ndarray]) -> None:
        self.module, self.seeds, self.served = module, iter(seeds), iter(served_actions)
        self.action_dim = module.action_dim
        self.observations, self.actions, self.candidates, self.scores = [], [], [], []

    def __call__(self, observation: torch.Tensor, noise: torch.Tensor):
        rows, k, d = noise.shape
        served_noise = torch.from_numpy(request_noise(next(self.seeds), rows, k, d))
        action, q, candidates = self.module(observation, served_noise)
        normalised = self.module.normalizer(observation).expand(k, -1)
        self.scores.append(self.module.critic(normalised, candidates[0]).mean(dim=0).numpy())
        self.observations.append(observation[0].numpy().copy())
        self.actions.append(action[0].numpy().copy())
        self.candidates.append(candidates[0].numpy().copy())
        return torch.from_numpy(next(self.served))[None], q, candidates


def assert_served_actions_are_the_best_candidates(replay: ServerNoise, served: list[np.ndarray]) -> None:
    """Each served action is mfql-eval's best candidate, or one whose score ties it to 1e-4."""
    exact = 0
    for step, (action, local, candidates, scores) in enumerate(
        zip(served, replay.actions, replay.candidates, replay.scores, strict=True)
    ):
        exact += bool(np.abs(action - local).max() <= 1e-5)
        matches = np.flatnonzero(np.abs(candidates - action).max(axis=1) <= 1e-5)
        assert matches.size, f"step {step}: served {action} is none of the candidates {candidates}"
        assert scores[matches].max() >= scores.max() - 1e-4, f"step {step}: {scores} chose {matches}"
    assert exact >= 0.95 * len(served), f"only {exact} of {len(served)} steps chose the same candidate"


def test_tiny_trained_model_served_takes_the_actions_mfql_eval_computes(tmp_path):
    data, run, repository = tmp_path / "data", tmp_path / "run", tmp_path / "repository"
    cli(
        "mfql-data", "training.data.cli", "generate", "--env", "cube-single-v0", "--episodes", "3",
        "--episode-length", "60", "--out", str(data / "cube-single-play-v0.npz"), "--no-progress",
    )  # fmt: skip
    cli(
        "mfql-train", "training.train", "--env", TASK, "--dataset-dir", str(data), "--out", str(run),
        "--policy", "mlp", "--mlp-hidden", "64,64", "--critic-hidden", "64,64", "--steps", "40",
        "--batch-size", "32", "--actor-lr", "3e-3", "--eval-episodes", "0", "--threads", "1",
    )  # fmt: skip
    cli("mfql-export", "exporters.cli", str(run), "--out", str(repository / "tiny" / "1"), "--format", "onnx")
    module, checkpoint = load_serving_policy(run)
    k = checkpoint.config.agent_config.num_candidates
    with running_server(repository) as url, open_client(url, "tiny") as client:
        remote = RecordingRemotePolicy(client)
        env = make_env(TASK)
        try:
            served = run_episodes(remote, env, 2, seed=5)
        finally:
            env.close()
        assert remote.last_answer.num_candidates == k  # both sides default to the trained K
    replay = ServerNoise(module, remote.seeds, remote.actions)
    evaluated = evaluate_policy(replay, TASK, 2, k, seed=5, progress=False)

    assert len(replay.actions) == len(remote.actions) == served["steps"]
    # Same env seeds and actions, same observations; same request noise, same candidates.
    np.testing.assert_array_equal(np.stack(replay.observations), np.stack(remote.observations))
    assert_served_actions_are_the_best_candidates(replay, remote.actions)
    spread = np.stack(replay.candidates).std(axis=1).mean()
    assert spread > 0.05, f"the noise must matter: candidates spread only {spread:.4f}"
    for key in ("success_rate", "mean_return", "mean_episode_length"):
        assert served[key] == pytest.approx(evaluated[key]), key


@pytest.mark.slow
def test_embedded_default_model_served_reproduces_its_recorded_success_rate(tmp_path):
    """The default bundle's metadata holds the mfql-eval report of its checkpoint (50 episodes)."""
    default_model = ROOT / "server" / "default_model"
    (bundle,) = [p for p in default_model.glob("*/*") if p.is_dir()]
    metadata = json.loads((bundle / "metadata.json").read_text())
    recorded = metadata["evaluation"]
    repository = tmp_path / "repository"  # a copy: the server's log goes beside the repository
    shutil.copytree(default_model, repository)
    with running_server(repository) as url:
        served = cli(
            "mfql-rollout", "clients.rollout", "--url", url, "--model", metadata["name"],
            "--env", recorded["env"], "--episodes", str(recorded["episodes"]),
        )  # fmt: skip
    assert agree(served, recorded), (served["success_rate"], recorded["success_rate"])
