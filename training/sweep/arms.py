"""What a sweep trains: presets of arms (named `mfql-train` flag sets on a shared base) and its grid.

A preset is a base of flags every arm shares plus its arms. `study` holds the MFQL study's arms
(docs/results/mfql-study.md and the pages after it report the ones that were run); `methods`
is the plain MFQL-against-FQL comparison, each method with its own defaults. A grid is every
(task, arm, seed): `--tasks` names each singletask task of `--env`'s family by its number, or
any singletask env (another family, another dataset) by its full name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BASE = [
    "--policy", "mlp", "--mlp-hidden", "256,256,256,256", "--critic-hidden", "256,256,256,256",
    "--hyperparameters", "reference", "--precision", "auto",
]  # fmt: skip
CONSTANT_LR = ["--actor-lr-schedule", "constant", "--actor-lr", "3e-4"]
# The reference's actor lr, spelled out: puzzle-3x3's family default is CONSTANT_LR (its study,
# training/config.py), so the arms named for the paper's setting name its schedule themselves.
REFERENCE_LR = ["--actor-lr-schedule", "warmup-cosine", "--actor-lr", "1e-4"]
ANCHORED_ALPHA_30 = [*CONSTANT_LR, "--alpha", "30", "--anchor-weight", "300"]

# name -> (what it tests, its flags on top of BASE)
ARMS: dict[str, tuple[str, list[str]]] = {
    "paper": ("the paper's setting, schedules squeezed into the run", REFERENCE_LR),
    "horizon-1M": ("schedules as if 1M steps, stopped early", [*REFERENCE_LR, "--schedule-steps", "1000000"]),
    "lr-constant": ("constant actor lr 3e-4 (FQL's), no warm-up or decay", CONSTANT_LR),
    "lr-constant-fp32": (
        "lr-constant with fp32 matmuls (the bf16 check)",
        [*CONSTANT_LR, "--precision", "fp32"],
    ),
    "draws-4": ("constant lr + 4 (e, t) draws per state in the MFI loss", [*CONSTANT_LR, "--mfi-draws", "4"]),
    "paper-draws-4": ("the paper's setting + 4 (e, t) draws per state", [*REFERENCE_LR, "--mfi-draws", "4"]),
    "draws-4-alpha-1000": (
        "draws-4 with alpha 1000",
        [*CONSTANT_LR, "--mfi-draws", "4", "--alpha", "1000"],
    ),
    # alpha 10 is the reference code's default. The gradient diagnosis (docs/results/mfql-study.md) puts the BC
    # term's consistent part at ~9x the Q term's at alpha 300, so alpha 10-30 is where the two
    # are of one size, as they are in FQL at its alpha.
    "alpha-10": ("constant lr, alpha 10 (the reference code's default)", [*CONSTANT_LR, "--alpha", "10"]),
    "alpha-30": ("constant lr, alpha 30", [*CONSTANT_LR, "--alpha", "30"]),
    "alpha-50": (
        "constant lr, alpha 50 (between alpha-30's drift and alpha-100's stall)",
        [*CONSTANT_LR, "--alpha", "50"],
    ),
    "alpha-100": ("constant lr, alpha 100", [*CONSTANT_LR, "--alpha", "100"]),
    "alpha-1000": ("constant lr, alpha 1000", [*CONSTANT_LR, "--alpha", "1000"]),
    # The puzzle sweep (issue 23; docs/results/puzzle.md): no MFQL alpha is published for puzzle,
    # whose family default is FQL's 1000, so lr-constant there is alpha-1000 (now the family's
    # default setting) and these span it.
    "alpha-300": ("constant lr, alpha 300 (cube-single's default)", [*CONSTANT_LR, "--alpha", "300"]),
    "alpha-3000": ("constant lr, alpha 3000", [*CONSTANT_LR, "--alpha", "3000"]),
    "dit": ("constant lr, the reference's DiT policy", [*CONSTANT_LR, "--policy", "dit"]),
    # MFQL's Q during training sits at about -27 where FQL's reaches -50 on the same data,
    # while FQL succeeds more: the best-of-K target (a max over K candidates) may overestimate.
    # The paper's hyperparameter K is 1 or 5; K = 1 is FQL's target (one candidate).
    "k-1": (
        "constant lr, K = 1 (critic target and action from one candidate)",
        [*CONSTANT_LR, "--num-candidates", "1"],
    ),
    # The gradient diagnosis: rows with t <= 0.25 carry most of the MFI gradient's noise, and the
    # policy acts only at t = 1, where the Q term pulls and the BC constraint is thinnest.
    "time-linear": (
        "constant lr, MFI flow times with density 2t (fewer near the data end, more near t = 1)",
        [*CONSTANT_LR, "--flow-time-sampling", "linear"],
    ),
    "ema": (
        "constant lr, an EMA of the policy's weights acts (rate 0.001)",
        [*CONSTANT_LR, "--policy-ema-rate", "0.001"],
    ),
    # alpha 30 with the K = 5 target let the policy climb to actions the critic overrates
    # (Q of its action -14 at 20k vs -27 at alpha 300, farther from the data, 0.00 success):
    # FQL's balance of BC and Q (alpha 30) with FQL's target (one candidate); acting stays best-of-5.
    "alpha-30-target-k1": (
        "constant lr, alpha 30, K = 1 in the critic target, best-of-5 when acting",
        [*CONSTANT_LR, "--alpha", "30", "--num-candidates", "1", "--eval-num-candidates", "5"],
    ),
    # The fourth session's reading: in FQL the BC anchor is a per-noise regression target at the
    # very output the Q term moves; in MFQL the t = 1 output is one point of a noisy loss over
    # all t. The anchor (`--anchor-weight`, FQL's alpha as its weight) gives MFQL that target
    # from its own 2-step sample, so the noisy MFI weight can drop to where Q moves the policy.
    "anchor-alpha-30": (
        "constant lr, alpha 30, one-step action anchored (weight 300) to the network's own 2-step sample",
        ANCHORED_ALPHA_30,
    ),
    "anchor-alpha-100": (
        "constant lr, alpha 100, one-step action anchored (weight 300) to the network's own 2-step sample",
        [*CONSTANT_LR, "--alpha", "100", "--anchor-weight", "300"],
    ),
    # FQL's set-up with MFQL's one network: the anchor keeps alpha 30 on the data, and the
    # critic's target takes one candidate (K = 1, FQL's target; the K = 5 target overrates
    # Q: -27 against FQL's -50 on the same data); acting stays best-of-5.
    "anchor-alpha-30-target-k1": (
        "anchor-alpha-30 with K = 1 in the critic target, best-of-5 when acting",
        [*ANCHORED_ALPHA_30, "--num-candidates", "1", "--eval-num-candidates", "5"],
    ),
    "anchor-alpha-10": (
        "constant lr, alpha 10 (the reference's default), one-step action anchored (weight 300)",
        [*CONSTANT_LR, "--alpha", "10", "--anchor-weight", "300"],
    ),
    "fql": ("the FQL baseline (its own settings)", ["--agent", "fql"]),
    # Action chunks (issue 21, Q-chunking arXiv 2507.07969): the policy emits 5 actions at once,
    # the critic learns 5-step backups, evaluation executes each chunk open-loop.
    "chunk-5": (
        "lr-constant with action chunks of 5 (Q-chunking's h = 5)",
        [*CONSTANT_LR, "--action-horizon", "5"],
    ),
    "fql-chunk-5": (
        "FQL with action chunks of 5 (Q-chunking's QC-FQL)",
        ["--agent", "fql", "--action-horizon", "5"],
    ),
}


@dataclass(frozen=True)
class Preset:
    """Flags every arm shares, then each arm's (what it tests, its flags on top)."""

    base: list[str]
    arms: dict[str, tuple[str, list[str]]]


PRESETS: dict[str, Preset] = {
    "study": Preset(BASE, ARMS),
    # The method comparison: each agent at its own defaults, the MLP policy for MFQL.
    "methods": Preset(
        ["--policy", "mlp"],
        {
            "mfql": ("MFQL at its defaults, MLP policy", ["--agent", "mfql"]),
            "fql": ("FQL at its defaults", ["--agent", "fql"]),
        },
    ),
    # Issue 37's study (docs/results/best-of-n.md): Q-chunking's low-budget recipe on sparse
    # rewards, chunks of 5, 4 x 256 networks (QC's are 4 x 512), every method at its defaults.
    "chunked": Preset(
        [*BASE, "--reward", "sparse", "--action-horizon", "5"],
        {
            # Each evaluation also acts re-noised at 0.3 (acting only: the same training), a row of
            # its own, `bon (re-noised 0.3)`: on puzzle-3x3 task2 its checkpoints at 60-100k read
            # 0.42-0.96 re-noised against 0.16-0.68 one step, its final evaluation at 100k 0.82
            # against 0.60 (docs/results/best-of-n.md, rounds 4-7). And re-noised, ranked by the
            # ensemble's minimum over 64 candidates, `bon (re-noised 0.3, min, K = 64)`: at least
            # as good as the mean over 32 in 13 of 14 checkpoints' cells on tasks 2 and 1 (rounds
            # 7-8); recorded on every task before it could become the default. And one step from
            # noise scaled by 0.5, `bon (noise x 0.5)`: on task4 at 100k it took the same checkpoint
            # from 0.00 to 0.28 (round 13).
            "bon": (
                "one-step best-of-N: MeanFlow policy by the MFI loss alone, best of K = 32 by the critic",
                [
                    "--agent",
                    "bon",
                    "--also-eval-renoise-time",
                    "0.3",
                    "--also-eval",
                    "renoise=0.3,aggregate=min,candidates=64",
                    "--also-eval",
                    "noise=0.5",
                ],
            ),
            # `bon` on observations as they are, as Q-chunking's code trains (mfql's default
            # normalises them, as ALGORITHM.md and the authors' code do). On puzzle-3x3 task4 at 100k
            # `bon`'s critic ranks chunks far from the goal by its errors (docs/results/
            # best-of-n.md, round 11), and mean-std normalisation maps near-constant dimensions
            # (a joint with std 0.001, button velocities) to values up to 200 and 70. To 40k on
            # task4 (one seed) it did not help: no success, and best of 32 still stops pressing.
            "bon-raw-obs": (
                "bon on raw observations (--observation-normalization none)",
                [
                    "--agent",
                    "bon",
                    "--observation-normalization",
                    "none",
                    "--also-eval-renoise-time",
                    "0.3",
                    "--also-eval",
                    "renoise=0.3,aggregate=min,candidates=64",
                ],
            ),
            # `bon` with a pessimistic critic target: the minimum over the two critics, where `bon`
            # takes their mean (Q-chunking's q_agg=min for the target; acting still ranks by the
            # mean, and the second evaluation row by the minimum). On puzzle-3x3 task4 `bon`'s critic
            # reads about -60 far from the goal where its own policy never succeeds (about -100),
            # and best of 32 ranks chunks there by its errors (docs/results/best-of-n.md, round 11).
            "bon-min-target": (
                "bon whose critic target takes the ensemble's minimum (--target-aggregate min)",
                [
                    "--agent",
                    "bon",
                    "--target-aggregate",
                    "min",
                    "--also-eval-renoise-time",
                    "0.3",
                    "--also-eval",
                    "renoise=0.3,aggregate=min,candidates=64",
                ],
            ),
            # `bon` whose critic values its generator's own next chunk (K = 1 in the target: the
            # behaviour's Q, as QC-FQL's critic values its own policy's chunk) and acts by the best
            # of 32 under it: one step of policy improvement. On puzzle-3x3 task4 at 100k QC-FQL's
            # critic steered its policy 3.4 presses from the goal, where `bon`'s best-of-32 target
            # left a critic whose best of 32 stops pressing (docs/results/best-of-n.md, round 12).
            # The target's candidate pass is 32x smaller: 52 steps/s on one thread against `bon`'s
            # 10.7. On task4 (one seed, 100k) its critic read the never-succeed value (-100) and
            # nothing succeeded at the final evaluation, three ways (round 12): no cure.
            "bon-k1-target": (
                "bon whose critic target is one candidate (--num-candidates 1), acting best of 32",
                [
                    "--agent",
                    "bon",
                    "--num-candidates",
                    "1",
                    "--eval-num-candidates",
                    "32",
                    "--also-eval-renoise-time",
                    "0.3",
                    "--also-eval",
                    "renoise=0.3,aggregate=min,candidates=64",
                ],
            ),
            # `bon` acting from noise scaled by 0.5, with its critic's target drawn at the same scale
            # (`--noise-scale-target`), so the critic learns the value of the tempered policy that
            # acts. Acting alone at 0.5 took `bon`'s task4 checkpoint from 0.00 to 0.28-0.30 (round 13).
            "bon-temper-target": (
                "bon acting and valuing its target from noise scaled by 0.5 (--noise-scale 0.5 --noise-scale-target)",
                [
                    "--agent",
                    "bon",
                    "--noise-scale",
                    "0.5",
                    "--noise-scale-target",
                    "--also-eval",
                    "noise=1",
                    "--also-eval",
                    "aggregate=min,candidates=64",
                ],
            ),
            # One-step best-of-N whose generator is distilled from a BC flow with no Q term: QC's
            # best-of-n actor with its 10-step flow sampler replaced by one network evaluation. On
            # puzzle-3x3 task4 a 100k QC-FQL critic ranking 32 candidates solved 0.64 of 50 episodes
            # with its 10-step flow's, 0.02 with its Q-pushed one-step policy's, and 0.58 with a
            # Q-free distillation of the same flow (docs/results/best-of-n.md, round 15).
            "bon-distill": (
                "one-step best-of-N: a one-step network distilled from a BC flow (no Q term), best of K = 32",
                ["--agent", "bon-distill"],
            ),
            # The same training as `bon`, acting re-noised (its one-step success is `mfql-eval CKPT
            # --renoise-time 0`); `bon` evaluates both ways from one training.
            "bon-renoise": (
                "bon acting with --renoise-time 0.3: each candidate refined once more (2 evaluations)",
                ["--agent", "bon", "--renoise-time", "0.3"],
            ),
            "fql-chunk-5": (
                "FQL with chunks of 5 at the family's alpha (puzzle: FQL's 1000)",
                ["--agent", "fql"],
            ),
            # QC-FQL as published: Q-chunking's README runs it with `--agent.alpha=100` (its
            # code's default, "tuned per environment"). On puzzle-3x3 task2 (sparse, 100k) FQL's
            # alpha 1000 never succeeded and its critic stayed at the never-succeed value; alpha
            # 100 succeeded from 80k (docs/results/best-of-n.md, round 3).
            "fql-chunk-5-alpha-100": (
                "QC-FQL as published: FQL with chunks of 5 and alpha 100",
                ["--agent", "fql", "--alpha", "100"],
            ),
            # On puzzle-3x3 task4 (seed 0, 100k) the one arm that succeeded more than once: 0.20 at
            # 100k, final 0.12 (6 of 50), 3.5 presses left of 9 (docs/results/best-of-n.md, round 12).
            "mfql-chunk-5": ("MFQL with chunks of 5, the family's alpha and K", ["--agent", "mfql"]),
            # The same at QC-FQL's published alpha: on task2 FQL's chunked critic left the
            # never-succeed value only at alpha 100 (round 3); MFQL's is untested there.
            "mfql-chunk-5-alpha-100": (
                "MFQL with chunks of 5 at QC-FQL's alpha (100), the family's K",
                ["--agent", "mfql", "--alpha", "100"],
            ),
        },
    ),
}


class GridError(ValueError):
    """A grid names an arm, a task or a seed the sweep cannot train."""


def describe_arm(preset: Preset, name: str) -> str:
    """What an arm tests; a table may hold arms that another version of the presets ran."""
    return (
        preset.arms[name][0] if name in preset.arms else "(an arm this version of mfql-sweep does not define)"
    )


def arm_flags(preset: Preset, names: list[str]) -> dict[str, list[str]]:
    """Each named arm's full flag list (base, then its own)."""
    unknown = [name for name in names if name not in preset.arms]
    if unknown:
        raise GridError(f"unknown arm(s) {unknown}; expected some of {list(preset.arms)}")
    return {name: [*preset.base, *preset.arms[name][1]] for name in names}


def task_env(env: str, task: int) -> str:
    """The singletask env of `task` in `env`'s family: `...-singletask[-taskK]-vN` ->
    `...-singletask-task<task>-vN` (OGBench's names)."""
    match = re.fullmatch(r"(.+-singletask)(?:-task\d+)?(-v\d+)", env)
    if match is None:
        raise GridError(
            f"--env {env!r}: --tasks needs a singletask env name, e.g. puzzle-3x3-play-singletask-v0"
        )
    return f"{match[1]}-task{task}{match[2]}"


def task_envs(env: str, tasks: str) -> dict[str, str]:
    """Folder key -> env: `task<N>` for a task number of `env`'s family, the env's own name for a
    full env name; {"": env} without `--tasks` (the runs then sit in `--out` itself)."""
    if not tasks:
        return {"": env}
    envs = {}
    for item in tasks.split(","):
        item = item.strip()
        envs[f"task{item}" if item.isdigit() else item] = task_env(env, int(item)) if item.isdigit() else item
    return envs


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise GridError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
