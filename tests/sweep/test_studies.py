"""The study analyses beside the sweep (training/studies/) read MFQL, FQL and chunked checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.sweep.conftest import TASK, TINY
from training.sweep.arms import ARMS, BASE
from training.train import main as train

ROOT = Path(__file__).resolve().parents[2]
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def runs(sweep_data_dir, tmp_path_factory) -> Path:
    """10-step runs of four study arms, as a sweep leaves them (one action per step, an EMA
    policy, FQL, chunks of 5)."""
    out = tmp_path_factory.mktemp("runs")
    for arm in ("paper", "ema", "fql", "chunk-5"):
        flags = ["--env", TASK, "--dataset-dir", str(sweep_data_dir), "--out", str(out / f"{arm}-seed0")]
        flags += ["--steps", "10", "--eval-episodes", "0", "--threads", "1", *BASE, *ARMS[arm][1], *TINY]
        assert train(flags) == 0
    return out


def study(module: str, run: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", f"training.studies.{module}", str(run), *args],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("arm, agent", [("paper", "mfql"), ("fql", "fql"), ("chunk-5", "mfql")])
def test_gradient_balance_splits_the_policy_gradient_at_a_checkpoint(runs, arm, agent):
    report = study("gradient_balance", runs / f"{arm}-seed0", "--batches", "2")
    assert report["agent"] == agent and report["step"] == 10
    assert report["bc_grad_norm_per_batch"] > 0 and report["q_grad_norm_per_batch"] > 0
    assert -1.0 <= report["cosine_bc_q"] <= 1.0
    if agent == "mfql":
        draws = report["bc_grad_norm_by_mfi_draws"]
        assert list(draws) == ["M=1", "M=4", "M=16"] and all(v > 0 for v in draws.values())
        assert report["bc_grad_norm_by_t_bin"] and -1.0 <= report["cosine_adam_step_q"] <= 1.0


@pytest.mark.parametrize("arm, agent", [("ema", "mfql"), ("fql", "fql"), ("chunk-5", "mfql")])
def test_generator_quality_scores_the_acting_generator(runs, arm, agent):
    report = study(
        "generator_quality", runs / f"{arm}-seed0", "--states", "64", "--k", "4", "--best-of", "1,4"
    )
    assert report["agent"] == agent and (report["states"], report["k"]) == (64, 4)
    # cube actions in [-1, 1]^5 (a chunk's squared distance is per action)
    assert 0 <= report["nearest_sq_dist"] <= report["mean_sq_dist"] <= 4 * 5
    assert report["action_horizon"] == (5 if arm.startswith("chunk") else 1)
    assert report["spread"] >= 0 and report["q_best_of_5"] >= report["q_candidates"] - 1e-4
    assert ("bc_flow_nearest_sq_dist" in report) == (agent == "fql")
    # what acting picks: best of all 4 is the candidate the critic rates highest, so its gain over
    # the data's action is the study's q_best_minus_dataset; best of 1 is the first candidate
    picked = report["best_of"]
    assert list(picked) == ["K=1", "K=4"] and picked["K=4"]["q_gain"] >= picked["K=1"]["q_gain"] - 1e-3
    assert abs(picked["K=4"]["q_gain"] - report["q_best_minus_dataset"]) <= 2e-3
    assert len(picked["K=1"]["abs_action"]) == len(report["dataset_abs_action"]) == 5
    assert all(0 <= value <= 1 for value in picked["K=4"]["abs_action"] + report["dataset_abs_action"])
    assert ("bc_flow_best_of" in report) == (agent == "fql")
    if arm == "chunk-5":  # a lower temperature: candidates from noise scaled by 0.25 spread less
        cooler = study(
            "generator_quality", runs / f"{arm}-seed0", "--states", "64", "--k", "4", "--noise-scale", "0.25"
        )
        assert cooler["noise_scale"] == 0.25 and cooler["spread"] < report["spread"]


def test_generator_quality_scores_the_states_an_evaluation_reached(runs, tmp_path):
    """mfql-eval --record-dir writes the requests; --states-from scores their states, each against
    the chunk the evaluated policy chose there."""
    run, record = runs / "chunk-5-seed0", tmp_path / "rec"
    evaluated = subprocess.run(
        [sys.executable, "-m", "training.evaluate", str(run), "--episodes", "1", "--record-dir", str(record)],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout)
    assert report["record_dir"] == str(record) and len(list(record.iterdir())) == 1
    scored = study("generator_quality", run, "--states-from", str(record), "--k", "5", "--best-of", "1,5")
    assert scored["reference"] == "recorded" and scored["states"] == report["requests"]
    assert scored["best_of"]["K=5"]["q_gain"] >= scored["best_of"]["K=1"]["q_gain"] - 1e-3
    again = subprocess.run(
        [sys.executable, "-m", "training.evaluate", str(run), "--episodes", "1", "--record-dir", str(record)],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode == 2 and "already holds recorded episodes" in again.stderr


def test_chosen_view_by_hand():
    """Best of K picks by the scores (the acting rank), and reports the pick's Q from `q`."""
    from training.studies.generator_quality import chosen_view

    candidates = torch.tensor(
        [[[0.0, 1.0], [1.0, 0.0]], [[0.5, -1.0], [0.0, 0.0]], [[1.0, 1.0], [-1.0, 0.5]]]
    )
    scores = torch.tensor([[0.0, 3.0], [2.0, 1.0], [1.0, 5.0]])  # [K=3, B=2]: best of 3 picks 1 and 2
    q = scores + 10.0
    actions, q_data = torch.zeros(2, 2), torch.tensor([10.0, 11.0])
    view = chosen_view(candidates, scores, q, actions, q_data, 2, [1, 3])
    # best of 1: candidate 0 for both states; best of 3: [0.5, -1] and [-1, 0.5]
    assert view["K=1"] == {"sq_dist": 1.0, "q_gain": 1.0, "abs_action": [0.5, 0.5]}
    assert view["K=3"] == {"sq_dist": 1.25, "q_gain": 3.0, "abs_action": [0.75, 0.75]}
    # a chunk of two 1-d actions: the distance is per action, |value| per action dimension
    chunked = chosen_view(candidates, scores, q, actions, q_data, 1, [3])
    assert chunked["K=3"]["sq_dist"] == 0.625 and chunked["K=3"]["abs_action"] == [0.75]


def candidate_rows(run: Path, *args: str) -> tuple[int, list[dict], str]:
    """Run training.studies.candidate_sources; its JSON lines (one per source) and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "training.studies.candidate_sources", str(run), *args],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT,
    )  # fmt: skip
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, rows, result.stderr


def test_candidate_sources_reproduce_mfql_eval_for_the_runs_own_candidates(runs, tmp_path):
    """`onestep` and `renoise:T` are what mfql-eval rolls out: same seeds, same episodes; each
    source's requests are recorded apart when asked."""
    run, common = runs / "chunk-5-seed0", ["--episodes", "2", "--seed", "7", "--num-candidates", "3"]
    both = ["--source", "onestep", "--source", "renoise:0.3", "--record-dir", str(tmp_path / "rec")]
    code, rows, err = candidate_rows(run, *both, *common)
    assert code == 0, err[-3000:]
    for row, folder in zip(rows, ("onestep", "renoise_0.3"), strict=True):
        recorded = [path.read_text().count("\n") for path in sorted((tmp_path / "rec" / folder).iterdir())]
        assert len(recorded) == 2 and sum(recorded) == row["requests"]
    code, _, err = candidate_rows(run, *both, *common)
    assert code == 2 and "already holds recorded episodes" in err
    assert [(r["source"], r["evaluations_per_candidate"]) for r in rows] == [
        ("onestep", 1),
        ("renoise:0.3", 2),
    ]
    for row, extra in zip(rows, ([], ["--renoise-time", "0.3"]), strict=True):
        evaluated = subprocess.run(
            [sys.executable, "-m", "training.evaluate", str(run), *common, *extra],
            capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        expected = json.loads(evaluated.stdout)
        for key in ("success_rate", "mean_return", "mean_episode_length", "requests", "action_horizon"):
            assert row[key] == expected[key], key
        assert row["step"] == expected["step"] == 10 and row["num_candidates"] == 3


def test_candidate_sources_take_another_runs_generators(runs):
    """The MFQL run's critic ranks the FQL run's BC flow (10 Euler steps) and one-step policy."""
    fql = runs / "fql-seed0"
    sources = [
        f"flow:{fql}",
        f"onestep:{fql}",
        "twostep",
        "renoise-fresh:0.5",
        "scale:1.5",
        "noise:0.3",
        "push:0.5",
    ]
    code, rows, err = candidate_rows(
        runs / "paper-seed0", *[f"--source={s}" for s in sources], "--episodes", "1", "--seed", "0"
    )
    assert code == 0, err[-3000:]
    assert [r["source"] for r in rows] == sources
    assert [r["evaluations_per_candidate"] for r in rows] == [10, 1, 2, 2, 1, 1, 1]
    assert all(r["episodes"] == 1 and r["mean_episode_length"] > 0 for r in rows)


def test_candidate_sources_compute_each_variant_from_the_one_step_candidate(runs):
    """Each source's maths against its formula, on the chunked run's own network."""
    from training.agents.common import one_step_actions
    from training.checkpoint import load_policy_checkpoint
    from training.inference import serving_policy_from_checkpoint
    from training.studies.candidate_sources import build_source

    base = load_policy_checkpoint(runs / "chunk-5-seed0")
    g = serving_policy_from_checkpoint(base).policy
    torch.manual_seed(0)
    s, e = torch.randn(4, base.obs_dim), torch.randn(4, base.action_dim * 5)
    one = one_step_actions(g, s, e).clamp(-1, 1)
    fresh = torch.randn(e.shape, generator=torch.Generator().manual_seed(3))
    t = torch.ones(1, 1)
    with torch.no_grad():
        assert torch.equal(build_source("onestep", base, 3)(s, e, t), one)
        assert torch.allclose(build_source("scale:1.5", base, 3)(s, e, t), 1.5 * one)
        assert torch.allclose(build_source("push:0.5", base, 3)(s, e, t), one + 0.5 * (one - e))
        assert torch.allclose(build_source("noise:0.3", base, 3)(s, e, t), one + 0.3 * fresh)
        tempered = one_step_actions(g, s, 0.5 * e).clamp(-1, 1)
        assert torch.allclose(build_source("temper:0.5", base, 3)(s, e, t), tempered)
        assert not torch.allclose(tempered, one)
        renoised = g(s, 0.7 * one + 0.3 * fresh, torch.full((1, 1), 0.3))
        assert torch.allclose(build_source("renoise-fresh:0.3", base, 3)(s, e, t), renoised)
        own = g(s, 0.7 * one + 0.3 * e.flip(-1), torch.full((1, 1), 0.3)).clamp(-1, 1)
        assert torch.allclose(build_source("renoise:0.3", base, 3)(s, e, t), own)


def test_candidate_sources_cross_one_runs_critic_with_another_runs_generator(runs):
    """`KIND[:NUMBER]:RUN` is the source KIND of RUN's network, ranked by the base run's critic."""
    from training.checkpoint import load_policy_checkpoint
    from training.studies.candidate_sources import build_source

    base, other = (load_policy_checkpoint(runs / name) for name in ("paper-seed0", "ema-seed0"))
    torch.manual_seed(1)
    s, e, t = torch.randn(4, base.obs_dim), torch.randn(4, base.action_dim), torch.ones(1, 1)
    with torch.no_grad():
        for kind in ("onestep", "twostep", "renoise:0.3", "renoise-fresh:0.5", "push:0.5", "noise:0.3"):
            crossed = build_source(f"{kind}:{runs / 'ema-seed0'}", base, 3)(s, e, t)
            assert torch.equal(crossed, build_source(kind, other, 3)(s, e, t)), kind
            # the two runs' generators differ (the ema run acts with its EMA copy), so the RUN counts
            assert not torch.equal(crossed, build_source(kind, base, 3)(s, e, t)), kind


@pytest.mark.parametrize(
    "run, source, message",
    [
        ("fql-seed0", "renoise:0.3", "needs a MeanFlow network"),
        ("paper-seed0", "flow", "a BC flow is an FQL (or bon-distill) run's"),
        ("paper-seed0", "flow:{runs}/chunk-5-seed0", "action_horizon"),
        ("paper-seed0", "renoise:1.5", "renoise_time"),
        ("paper-seed0", "scale:big", "takes a number"),
        ("paper-seed0", "twostep:2", "2: no such checkpoint"),
        ("paper-seed0", "renoise:0.3:{runs}/fql-seed0", "needs a MeanFlow network"),
        ("paper-seed0", "push:0.5:{runs}/chunk-5-seed0", "action_horizon"),
        ("paper-seed0", "best", "expected one of onestep, renoise"),
    ],
)
def test_candidate_sources_refuse_what_they_cannot_build(runs, capsys, run, source, message):
    from training.studies.candidate_sources import main

    assert main([str(runs / run), "--source", source.format(runs=runs), "--episodes", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err, captured.err


def test_candidate_sources_rank_by_the_ensemble_minimum_when_asked(runs, monkeypatch, capsys):
    """`--critic-aggregate min`: the module rolled out ranks by min_e Q_e (the maths:
    tests/training/test_critic_aggregate.py); by default the source ranks as the run acts, by the mean."""
    import training.studies.candidate_sources as study

    ranked_by = []

    def fake_evaluation(module, *args, **kwargs):
        ranked_by.append(module.critic_aggregate)
        return {"success_rate": 0.0, "policy_latency_ms": {}}

    monkeypatch.setattr(study, "evaluate_policy", fake_evaluation)
    run = str(runs / "chunk-5-seed0")
    assert study.main([run, "--source", "renoise:0.3", "--source", "onestep"]) == 0
    assert study.main([run, "--source", "renoise:0.3", "--critic-aggregate", "min"]) == 0
    assert ranked_by == ["mean", "mean", "min"]
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["critic_aggregate"] for row in rows] == ["mean", "mean", "min"]


def test_critic_values_reads_the_chunked_runs_critic_on_its_data(runs):
    """The study's JSON on a real chunked run; each group's numbers are the served critic's."""
    report = study("critic_values", runs / "chunk-5-seed0", "--states", "8", "--k", "3")
    assert (report["agent"], report["k"], report["step"]) == ("mfql", 3, 10)
    groups = report["by_steps_to_success"]
    assert groups and all(0 < g["states"] <= 8 for g in groups)
    assert all(g["q_spread"] >= 0 and g["q_best_minus_median"] >= 0 for g in groups)
    assert "by_presses_left" not in report  # a cube run: no Lights Out distance


def test_critic_values_view_is_the_served_computation(runs):
    """q_data is the target critic's ensemble mean of the data's chunk; q_best and the candidate
    scores are what ServingPolicy computes for the same noise."""
    import numpy as np

    from training.checkpoint import load_policy_checkpoint
    from training.data.sources import load_training_data
    from training.inference import serving_policy_from_checkpoint
    from training.studies.critic_values import critic_view

    checkpoint = load_policy_checkpoint(runs / "chunk-5-seed0")
    served = serving_policy_from_checkpoint(checkpoint)
    config = checkpoint.config
    dataset = load_training_data(config.env_name, config.dataset_dir, config.data).train
    rows = np.array([0, 7, 20])
    view = critic_view(served, dataset, rows, 4, torch.Generator().manual_seed(5))
    obs = torch.as_tensor(dataset.observations[rows])
    chunk = torch.as_tensor(np.concatenate([dataset.actions[rows + j] for j in range(5)], axis=1))
    with torch.no_grad():
        q_data = served.critic(served.normalizer(obs), chunk).mean(dim=0)
        noise = torch.randn((3, 4, 5, checkpoint.action_dim), generator=torch.Generator().manual_seed(5))
        _, q_best, candidates = served(obs, noise)
        scores = served.critic(served.normalizer(obs), candidates.reshape(3, 4, -1).transpose(0, 1)).mean(0)
    assert np.allclose(view["q_data"], q_data.numpy(), atol=1e-5)
    assert np.allclose(view["q_best"], q_best.numpy(), atol=1e-5)
    assert np.allclose(view["q_best"], scores.max(dim=0).values.numpy(), atol=1e-5)
    assert np.allclose(view["q_spread"], scores.std(dim=0).numpy(), atol=1e-5)


def test_flow_distillation_writes_the_run_with_a_q_free_student_of_its_flow(runs, tmp_path):
    """The student regresses onto the BC flow's samples: its error to them falls; the written
    step directory keeps every other tensor and is read by the other tools as the run is."""
    from training.checkpoint import load_policy_checkpoint

    out = tmp_path / "distilled"
    report = study(
        "flow_distillation", runs / "fql-seed0", "--steps", "60", "--log-every", "20", "--out", str(out)
    )
    assert report["out"] == str(out) and report["steps"] == 60 and report["flow_steps"] == 10
    source, distilled = load_policy_checkpoint(runs / "fql-seed0"), load_policy_checkpoint(out)
    log = distilled.metrics["flow_distillation"]["log"]
    assert [row["step"] for row in log] == [0, 20, 40, 60]
    assert log[-1]["probe_sq_error"] < log[0]["probe_sq_error"]
    assert distilled.model.keys() == source.model.keys()
    for key in source.model:
        same = torch.equal(distilled.model[key], source.model[key])
        assert same == (not key.startswith("policy.")), key
    quality = study("generator_quality", out, "--states", "32", "--k", "4")
    assert quality["agent"] == "fql" and quality["mean_sq_dist"] >= 0


@pytest.mark.parametrize(
    "run, out, message",
    [
        ("paper-seed0", "new", "a BC flow is an FQL (or bon-distill) run's"),
        ("fql-seed0", "existing", "exists"),
    ],
)
def test_flow_distillation_refuses_a_run_without_a_flow_and_an_existing_out(
    runs, tmp_path, capsys, run, out, message
):
    from training.studies.flow_distillation import main

    (tmp_path / "existing").mkdir()
    with pytest.raises(SystemExit) as stopped:
        main([str(runs / run), "--steps", "1", "--out", str(tmp_path / out)])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_distil_fits_a_flow_whose_samples_are_known():
    """A constant velocity c moves noise e to e + c in any number of Euler steps: the student's
    target is clip(e + c), and regression alone brings it there."""
    from types import SimpleNamespace

    from training.config import NetworkConfig
    from training.networks import OneStepMLPPolicy
    from training.studies.flow_distillation import DistillationSettings, distil

    class ConstantVelocity(torch.nn.Module):
        def forward(self, observations, x, t):
            return torch.full_like(x, 0.25)

    observations = torch.randn(64, 3)
    buffer = SimpleNamespace(
        sample=lambda n: SimpleNamespace(observations=observations[:n], actions=torch.zeros(n, 2))
    )
    student = OneStepMLPPolicy(3, 2, NetworkConfig(mlp_hidden=(64, 64)))
    settings = DistillationSettings(
        steps=600, batch_size=64, learning_rate=3e-3, log_every=300, probe_states=64
    )
    log = distil(ConstantVelocity(), student, buffer, settings, flow_steps=4, progress=False)
    assert log[0]["probe_sq_error"] > 0.1 and log[-1]["probe_sq_error"] < 0.01
