"""`--also-eval-renoise-time`: every evaluation also acts a second way (re-noised, or one step), on
the same episodes and seeds; what is refused, what a run writes, a resume that sets it anew."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import training.train
from training.checkpoint import load_policy_checkpoint
from training.config import Acting, ActingOverrides, ActingVariant, TrainConfig, resolve_agent_config
from training.evaluate import main as eval_main
from training.run_log import read_also_evaluations
from training.train import build_parser, config_from_args
from training.train import main as train_main

TASK = "cube-single-play-singletask-task2-v0"


def _train(out, data_dir, *extra: str) -> int:
    return train_main(
        [
            "--env", TASK, "--dataset-dir", str(data_dir), "--out", str(out), "--agent", "bon",
            "--policy", "mlp", "--mlp-hidden", "16,16", "--critic-hidden", "16,16", "--batch-size", "32",
            "--steps", "6", "--eval-every", "6", "--eval-episodes", "1", "--num-candidates", "4",
            "--action-horizon", "2", "--threads", "1", "--compile", "off", "--seed", "2", *extra,
        ]
    )  # fmt: skip


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_second_evaluation_is_refused_where_it_cannot_apply_or_repeats_the_first():
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match="--also-eval-renoise-time: MFQL options"):
        config_from_args(parse(["--agent", "fql", "--also-eval-renoise-time", "0.3"]))
    with pytest.raises(ValueError, match="one-step network mu\\(s, z\\) \\(fql, bon-distill\\) takes no t"):
        TrainConfig(agent="fql", also_eval_renoise_time=0.3)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\) \(0: one step"):
        config_from_args(parse(["--agent", "bon", "--also-eval-renoise-time", "1"]))
    with pytest.raises(ValueError, match="the run already acts one step"):
        config_from_args(parse(["--agent", "bon", "--also-eval-renoise-time", "0"]))
    with pytest.raises(ValueError, match="the run already acts re-noised at 0.3"):
        config_from_args(parse(["--renoise-time", "0.3", "--also-eval-renoise-time", "0.3"]))
    assert (
        config_from_args(parse(["--agent", "bon", "--also-eval-renoise-time", "0.3"])).also_eval_renoise_time
        == 0.3
    )
    # a run that acts re-noised is also evaluated one step (0), or at another time
    renoised = TrainConfig(agent_config=resolve_agent_config(TASK, renoise_time=0.3))
    (one_step,) = replace(renoised, also_eval_renoise_time=0.0).also_eval_variants
    assert one_step.acting(renoised)[0].renoise_time is None and one_step.label == "one step"
    (other,) = replace(renoised, also_eval_renoise_time=0.5).also_eval_variants
    assert other.acting(renoised)[0].renoise_time == 0.5 and other.label == "re-noised 0.5"


def test_each_evaluation_also_acts_re_noised_on_the_same_episodes(
    tmp_path, two_episode_data_dir, monkeypatch, capsys
):
    real = training.train.evaluate_policy
    calls = []

    def recorded(module, env_name, episodes, num_candidates, seed, **kwargs):
        calls.append((module, seed))
        return real(module, env_name, episodes, num_candidates, seed, **kwargs)

    monkeypatch.setattr(training.train, "evaluate_policy", recorded)
    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--also-eval-renoise-time", "0.3") == 0
    (first, first_seed), (second, second_seed) = calls
    assert first_seed == second_seed == 2 + 10_000 * 6  # the same episodes
    assert first.renoise_time is None and second.renoise_time == 0.3
    assert second.policy is first.policy and second.critic is first.critic  # the same networks
    observation = torch.randn(3, first.normalizer.mean.shape[0])
    noise = torch.randn(3, 4, *first.noise_shape)
    with torch.no_grad():
        assert not torch.allclose(first(observation, noise)[2], second(observation, noise)[2])

    main_rows, also_rows = _rows(run / "evaluations.csv"), _rows(run / "evaluations_also.csv")
    assert [r["step"] for r in main_rows] == [r["step"] for r in also_rows] == ["6"]
    assert also_rows[0]["renoise_time"] == "0.3" and also_rows[0]["num_candidates"] == "4"
    assert "step 6: acting re-noised 0.3, success" in capsys.readouterr().out
    # the logged second evaluation is mfql-eval of the checkpoint re-noised, on the same seeds
    assert eval_main([str(run), "--episodes", "1", "--seed", str(second_seed), "--renoise-time", "0.3"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("success_rate", "mean_return", "mean_episode_length"):
        assert float(also_rows[0][key]) == pytest.approx(report[key]), key
    assert report["renoise_time"] == 0.3 and report["requests"] == 100  # 200 steps, chunks of 2
    assert (run / "curves.png").stat().st_size > 1000


def test_a_resumed_run_may_set_the_second_evaluation_anew(tmp_path, two_episode_data_dir):
    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--stop-after", "3") == 0
    assert load_policy_checkpoint(run).config.also_eval_renoise_time is None
    assert _train(run, two_episode_data_dir, "--resume", "--also-eval-renoise-time", "0.4") == 0
    assert load_policy_checkpoint(run).config.also_eval_renoise_time == 0.4
    assert [r["renoise_time"] for r in _rows(run / "evaluations_also.csv")] == ["0.4"]


def test_the_sweeps_final_row_evaluates_the_second_way_on_the_final_evaluations_episodes(
    tmp_path, two_episode_data_dir, capsys
):
    pytest.importorskip("ray")
    from training.sweep.trainable import FINAL_EVAL_SEED, final_row

    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--also-eval-renoise-time", "0.3", "--eval-episodes", "0") == 0
    row = final_row(SimpleNamespace(run_dir=run), "bon", 2, episodes=1, seconds=1.0)
    capsys.readouterr()
    seed = FINAL_EVAL_SEED + 1000 * 2
    assert eval_main([str(run), "--episodes", "1", "--seed", str(seed), "--renoise-time", "0.3"]) == 0
    report = json.loads(capsys.readouterr().out)
    (also,) = row["also"]
    assert also["renoise_time"] == 0.3 and also["variant"] == "renoise=0.3" and also["num_candidates"] == 4
    for key in ("success_rate", "success_rate_stderr", "mean_return"):
        assert also[key] == report[key], key


def test_acting_overrides_keep_the_runs_settings_where_unset():
    run = Acting(renoise_time=0.3, critic_aggregate="min", noise_scale=0.5)
    assert ActingOverrides().applied_to(run) == run
    assert ActingOverrides(renoise_time=0).applied_to(run) == Acting(None, "min", 0.5)  # 0: one step
    assert ActingOverrides(0.2, "mean", 1.0).applied_to(run) == Acting(renoise_time=0.2)
    assert Acting().report == {} and run.report == {
        "renoise_time": 0.3,
        "critic_aggregate": "min",
        "noise_scale": 0.5,
    }
    assert resolve_agent_config(TASK, renoise_time=0.3).acting == Acting(0.3)
    variant = ActingVariant(0.0, "min", 64, 0.5)
    assert variant.overrides == ActingOverrides(0.0, "min", 0.5)
    config = TrainConfig(agent_config=resolve_agent_config(TASK, renoise_time=0.3))
    assert variant.acting(config) == (Acting(None, "min", 0.5), 64)
    for bad, message in (
        ({"renoise_time": 1.0}, "renoise_time must be in"),
        ({"critic_aggregate": "max"}, "critic_aggregate must be one of"),
        ({"noise_scale": -1.0}, "noise_scale must be a finite number"),
    ):
        with pytest.raises(ValueError, match=message):
            ActingOverrides(**bad).applied_to(run)


def test_also_eval_specs_parse_to_one_canonical_form_and_bad_ones_are_refused():
    variant = ActingVariant.parse(" candidates=64, renoise=0.30,aggregate=min")
    assert variant == ActingVariant(0.3, "min", 64)
    assert variant.spec == "renoise=0.3,aggregate=min,candidates=64"
    assert ActingVariant.parse(variant.spec) == variant
    assert variant.label == "re-noised 0.3, min, K = 64"
    assert ActingVariant(0.0).label == "one step" and ActingVariant(num_candidates=8).label == "K = 8"
    tempered = ActingVariant.parse("noise=0.50,candidates=32")
    assert tempered == ActingVariant(num_candidates=32, noise_scale=0.5)
    assert (tempered.spec, tempered.label) == ("candidates=32,noise=0.5", "K = 32, noise x 0.5")
    bad = {
        "": "expected comma-separated key=value",
        "renoise": "expected comma-separated key=value",
        "temperature=0.3": "expected comma-separated key=value",
        "noise=-0.5": "--also-eval noise must be a finite number >= 0",
        "noise=nan": "--also-eval noise must be a finite number >= 0",
        "renoise=x": "renoise=x is not a number",
        "candidates=2.5": "candidates=2.5 is not a number",
        "renoise=1": r"renoise must be in \[0, 1\)",
        "aggregate=max": "aggregate must be mean or min; got 'max'",
        "candidates=0": "candidates must be >= 1",
        "renoise=0.3,renoise=0.5": "renoise is given twice",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError, match=message):
            ActingVariant.parse(spec)
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match="renoise=0.3: renoise applies to MeanFlow policies"):
        config_from_args(parse(["--agent", "fql", "--also-eval", "renoise=0.3"]))
    # FQL acts best-of-K too: another K or the minimum applies to it
    fql = config_from_args(parse(["--agent", "fql", "--also-eval", "aggregate=min,candidates=9"]))
    assert fql.also_eval == ("aggregate=min,candidates=9",)
    with pytest.raises(
        ValueError, match=r"acts as the run itself already does \(re-noise off, mean, noise x 1, K = 32\)"
    ):
        config_from_args(parse(["--agent", "bon", "--also-eval", "aggregate=mean,candidates=32"]))
    with pytest.raises(ValueError, match=r"already does \(re-noise off, mean, noise x 0.5, K = 32\)"):
        config_from_args(parse(["--agent", "bon", "--noise-scale", "0.5", "--also-eval", "noise=0.5"]))
    # a tempered variant of a bon run, and of an FQL run (its one-step policy takes noise too)
    assert config_from_args(parse(["--agent", "bon", "--also-eval", "noise=0.5"])).also_eval == ("noise=0.5",)
    assert config_from_args(parse(["--agent", "fql", "--also-eval", "noise=0.5"])).also_eval == ("noise=0.5",)
    with pytest.raises(ValueError, match="acts as --also-eval-renoise-time 0.3 already does"):
        config_from_args(
            parse(
                [
                    "--agent",
                    "bon",
                    "--also-eval-renoise-time",
                    "0.3",
                    "--also-eval",
                    "renoise=0.3,candidates=32",
                ]
            )
        )


def test_each_other_way_of_acting_is_rolled_out_on_the_same_episodes_and_logged(
    tmp_path, two_episode_data_dir, monkeypatch, capsys
):
    """--also-eval-renoise-time 0.3 and --also-eval renoise=0.3,aggregate=min,candidates=6: three
    roll-outs of the same episodes, the last with K = 6 ranked by the minimum; each logged row is
    mfql-eval of the checkpoint acting that way on those seeds."""
    real = training.train.evaluate_policy
    calls = []

    def recorded(module, env_name, episodes, num_candidates, seed, **kwargs):
        calls.append((module.renoise_time, module.critic_aggregate, num_candidates, seed))
        return real(module, env_name, episodes, num_candidates, seed, **kwargs)

    monkeypatch.setattr(training.train, "evaluate_policy", recorded)
    run = tmp_path / "run"
    variant = "candidates=6,aggregate=min,renoise=0.3"
    assert _train(run, two_episode_data_dir, "--also-eval-renoise-time", "0.3", "--also-eval", variant) == 0
    seed = 2 + 10_000 * 6
    assert calls == [(None, "mean", 4, seed), (0.3, "mean", 4, seed), (0.3, "min", 6, seed)]
    assert load_policy_checkpoint(run).config.also_eval == ("renoise=0.3,aggregate=min,candidates=6",)
    rows = _rows(run / "evaluations_also.csv")
    assert [(r["variant"], r["critic_aggregate"], r["num_candidates"]) for r in rows] == [
        ("renoise=0.3", "mean", "4"),
        ("renoise=0.3,aggregate=min,candidates=6", "min", "6"),
    ]
    assert "step 6: acting re-noised 0.3, min, K = 6, success" in capsys.readouterr().out
    flags = ["--renoise-time", "0.3", "--critic-aggregate", "min", "--num-candidates", "6"]
    assert eval_main([str(run), "--episodes", "1", "--seed", str(seed), *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("success_rate", "mean_return", "mean_episode_length"):
        assert float(rows[1][key]) == pytest.approx(report[key]), key
    assert set(read_also_evaluations(run)) == {"renoise=0.3", "renoise=0.3,aggregate=min,candidates=6"}


def test_a_resumed_run_adds_a_way_of_acting_to_an_older_log(tmp_path, two_episode_data_dir):
    """An evaluations_also.csv from before --also-eval (no variant column) is widened, not
    misaligned, when a resumed run logs another way; its rows keep their re-noise time's variant."""
    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--stop-after", "3", "--eval-every", "3",
                  "--also-eval-renoise-time", "0.3") == 0  # fmt: skip
    path = run / "evaluations_also.csv"
    old = _rows(path)
    legacy = [key for key in old[0] if key not in ("variant", "critic_aggregate")]
    with open(path, "w", newline="") as handle:  # as a run of the eighth session wrote it
        writer = csv.DictWriter(handle, fieldnames=legacy, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(old)
    assert (
        _train(run, two_episode_data_dir, "--resume", "--eval-every", "3", "--also-eval", "aggregate=min")
        == 0
    )
    by_variant = read_also_evaluations(run)
    assert [r["step"] for r in by_variant["renoise=0.3"]] == ["3", "6"]
    assert [(r["step"], r["critic_aggregate"]) for r in by_variant["aggregate=min"]] == [("6", "min")]
    assert (run / "curves.png").stat().st_size > 1000
