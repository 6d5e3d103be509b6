"""Typed configuration for MFQL training, and the per-task-family hyperparameter table.

Every default carries a comment saying what it is. The table `TASK_FAMILIES` is the one
place where OGBench families differ (ALGORITHM.md, "Per-family defaults").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from training.data.rewards import RewardConfig
from training.data.sources import DataConfig

PolicyType = Literal["dit", "mlp"]
GeluKind = Literal["tanh", "erf"]
GELU_KINDS: tuple[str, ...] = get_args(GeluKind)
AlphaSchedule = Literal["adaptive", "cosine"]
ActorLrSchedule = Literal["warmup-cosine", "constant"]
# How the MFI loss draws flow times t: "uniform" is the paper's; "linear" has density 2t, so
# half as many rows near the data end (t -> 0, where the gradient noise is) and twice as many
# near t = 1, the only time the policy acts at.
FlowTimeSampling = Literal["uniform", "linear"]
# How acting ranks the K candidates by the critic ensemble: its mean (the paper and the
# reference) or its minimum (a study option; AgentConfig.critic_aggregate).
CriticAggregate = Literal["mean", "min"]
FLOW_TIME_SAMPLINGS: tuple[str, ...] = get_args(FlowTimeSampling)
HyperparameterSource = Literal["paper", "reference"]
AgentName = Literal["mfql", "fql", "bon", "bon-distill"]
# Agents whose acting network is a one-step mu(s, z) distilled from a BC flow they also train
# (`bc_flow.*` in their checkpoints): it takes no flow time t, so nothing re-noises it.
FLOW_DISTILLED_AGENTS = ("fql", "bon-distill")
# The message for an option that needs a MeanFlow network g(s, z, t).
NO_FLOW_TIME = (
    "applies to MeanFlow policies (mfql, bon); a one-step network mu(s, z) (fql, bon-distill) takes no t"
)


@dataclass(frozen=True)
class TaskFamily:
    """Defaults for one OGBench task family (reference / FQL settings)."""

    alpha: float  # BC coefficient alpha: the one knob tuned per family
    fql_alpha: float  # FQL's distillation coefficient for the family
    num_candidates: int  # K: candidates for best-of-K (critic target and inference)
    discount: float  # discount of the reference code for this family
    time_steps: int  # N: t grid {1/N..1}; N > 1000 means continuous uniform t
    horizon: int  # evaluation episode length of the singletask env
    # MFQL's actor lr and its schedule where a study chose them (None: AgentConfig's defaults,
    # the reference's warm-up + cosine to 1e-4)
    actor_lr: float | None = None
    actor_lr_schedule: ActorLrSchedule | None = None


# ALGORITHM.md, "Per-family defaults". Keys are env-name prefixes; the longest match wins.
# cube-single's MFQL row was studied on 2026-11-30 (docs/results/mfql-study.md; runs with
# benchmarks/ablate.py): at 30k steps no arm (constant actor lr, alpha 30, 100 or 1000, 4 MFI
# draws, K = 1, a K = 1 target with best-of-5 acting, the DiT, schedules as if 1M steps, an
# EMA of the policy acting, flow times with density 2t) beat this setting robustly (the best,
# a constant lr: 0.15 +/- 0.05 over 3 seeds, vs FQL's 0.49 +/- 0.05; in 110 minutes of
# training each, 0.44 vs 0.96), so it stays the reference's; the study's options are flags. Lower alpha lets the Q term push the
# one-step policy off the data (docs/results/generator-quality.md). scene's row was run once with
# the constant lr at 30k (docs/results/second-family.md); it stays the assumed value.
# puzzle-3x3's row was studied on 2026-12-02/03 (docs/results/puzzle.md): alpha 1000 (FQL's
# puzzle value; the paper publishes no per-task MFQL setting for puzzle) with K = 5 and the
# constant actor lr 3e-4 (the study's `alpha-1000` arm; the reference's warm-up + cosine was
# not run on puzzle) won task1 at 30k steps, 1.00 against FQL's 0.56 over 50 episodes, and at
# equal training time, 0.93 +/- 0.06 against 0.26 +/- 0.26 over three seeds; that run is the
# embedded puzzle-3x3-task1 model. On tasks 2-5 (5-9 presses) neither method succeeds at 30k,
# so the 5-task mean is MFQL 0.20, FQL 0.11 (one seed per task). Chunks of 5 (`--action-horizon
# 5`) lift FQL on task1 to 0.90 and leave MFQL at 0.92 (one seed). At equal training time (30
# min, three seeds) chunked FQL leads H = 1 MFQL, 0.97 +/- 0.01 against 0.87 +/- 0.19, within
# MFQL's spread. The rows keep H = 1: chunks did not help MFQL here, and the action horizon is
# a per-run choice (`--action-horizon`), not a family default.
# The task1 alpha sweep at 30k steps (one seed): 300 0.74, 1000 1.00, 3000 1.00; 1000 stays.
# With Q-chunking's sparse reward (`--reward sparse`) and chunks of 5 at 100k steps (issue 37,
# docs/results/best-of-n.md, rounds 12-14) this row, unchanged, is the strongest method of one
# network evaluation per candidate tried on puzzle-3x3: tasks 1-5 0.98 / 0.92 / 0.16 / 0.12 /
# 0.46 (seed 0; task2 seed 1: 0.82), against QC-FQL's 1.00 / 0.04 / 0.00 / 0.00 / 0.00 here;
# best of more candidates (K = 16, 32) drives the arm off the data's workspace and loses. The
# horizon and the reward stay per-run flags (`--action-horizon 5 --reward sparse`).
# puzzle-4x4's row is untried: FQL's alpha and the reference's actor lr.
TASK_FAMILIES: dict[str, TaskFamily] = {
    "cube-single": TaskFamily(
        alpha=300.0, fql_alpha=300.0, num_candidates=5, discount=0.99, time_steps=10000, horizon=200
    ),
    "cube-double": TaskFamily(
        alpha=120.0, fql_alpha=300.0, num_candidates=5, discount=0.99, time_steps=50, horizon=500
    ),
    "scene": TaskFamily(
        alpha=300.0, fql_alpha=300.0, num_candidates=5, discount=0.99, time_steps=10000, horizon=750
    ),
    "puzzle-3x3": TaskFamily(
        alpha=1000.0,
        fql_alpha=1000.0,
        num_candidates=5,
        discount=0.99,
        time_steps=10000,
        horizon=500,
        actor_lr=3e-4,
        actor_lr_schedule="constant",
    ),
    "puzzle-4x4": TaskFamily(
        alpha=1000.0, fql_alpha=1000.0, num_candidates=5, discount=0.99, time_steps=10000, horizon=500
    ),
    "antmaze-large": TaskFamily(
        alpha=10.0, fql_alpha=10.0, num_candidates=5, discount=0.99, time_steps=100, horizon=1000
    ),
    "humanoidmaze-medium": TaskFamily(
        alpha=150.0, fql_alpha=30.0, num_candidates=5, discount=0.995, time_steps=50, horizon=2000
    ),
    "humanoidmaze-large": TaskFamily(
        alpha=10000.0, fql_alpha=30.0, num_candidates=5, discount=0.995, time_steps=50, horizon=2000
    ),
}


# D4RL tasks by their Minari ids (docs/datasets.md), UNVERIFIED: alpha / K / time steps from
# others' reading of the paper's Table 7, never run here (the files need a network to download);
# FQL's alpha is set to MFQL's for want of a published one, and the horizons are D4RL's episode
# lengths. An independent reproduction found adroit needed alphas 3-30x lower than these.
def _unverified_d4rl(alpha: float, time_steps: int, horizon: int) -> TaskFamily:
    return TaskFamily(
        alpha=alpha, fql_alpha=alpha, num_candidates=5, discount=0.99, time_steps=time_steps, horizon=horizon
    )


# key: (alpha, time steps, D4RL episode length)
D4RL_FAMILIES: dict[str, TaskFamily] = {
    key: _unverified_d4rl(*row)
    for key, row in {
        "D4RL/antmaze/umaze": (100.0, 10000, 700),
        "D4RL/antmaze/umaze-diverse": (130.0, 100, 700),
        "D4RL/antmaze/medium-play": (10.0, 50, 1000),
        "D4RL/antmaze/medium-diverse": (50.0, 50, 1000),
        "D4RL/antmaze/large-play": (10.0, 100, 1000),
        "D4RL/relocate": (10000.0, 50, 200),
        "D4RL/pen": (10000.0, 100, 100),
        "D4RL/hammer": (11000.0, 100, 200),
        "D4RL/door": (9000.0, 50, 200),
    }.items()
}
TASK_FAMILIES.update(D4RL_FAMILIES)
GENERIC_FAMILY = TaskFamily(
    alpha=300.0, fql_alpha=300.0, num_candidates=5, discount=0.99, time_steps=10000, horizon=1000
)

# The paper's text for OGBench (critic lr 1e-4, discount 0.995) differs from its code
# (critic lr 3e-4, per-family discount). We expose both and default to the paper's text.
PAPER_CRITIC_LR = 1e-4
PAPER_DISCOUNT = 0.995
REFERENCE_CRITIC_LR = 3e-4
FQL_LR = 3e-4  # FQL: one Adam, constant lr, for every network
# One-step best-of-N (agent "bon") takes Q-chunking's best-of-n settings (arXiv 2507.07969, its
# README's OGBench commands): 32 candidates, chunks of 5 actions, lr 3e-4 constant for actor and
# critic, the family's discount (0.99 for the manipulation families QC runs).
BON_NUM_CANDIDATES = 32
BON_ACTION_HORIZON = 5
QC_LR = 3e-4


def task_family(env_name: str) -> TaskFamily:
    """The defaults for the family an env/dataset name belongs to (generic if unknown)."""
    matches = [prefix for prefix in TASK_FAMILIES if env_name.startswith(prefix)]
    return TASK_FAMILIES[max(matches, key=len)] if matches else GENERIC_FAMILY


@dataclass(frozen=True)
class NetworkConfig:
    """Network sizes (reference sizes by default)."""

    policy: PolicyType = "dit"  # policy network: small DiT on one token, or MLP
    dit_width: int = 256  # DiT token width
    dit_depth: int = 3  # DiT blocks
    dit_heads: int = 2  # DiT heads (one token: heads do not change the function)
    dit_mlp_ratio: float = 4.0  # DiT MLP hidden = ratio * width
    dit_residual_scale: float = 0.1  # block update mixing x + s (block(x) - x)
    time_frequencies: int = 256  # sinusoidal features of t
    mlp_hidden: tuple[int, ...] = (512, 512, 512, 512)  # MLP policy hidden layers
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)  # each critic's hidden layers
    num_critics: int = 2  # critic ensemble size
    # GELU of the MLP policy and the critics. The reference's networks use flax's nn.gelu, the
    # tanh approximation ("tanh"); mfql has always used the exact erf GELU, and every result
    # in docs/results/ was measured with it, so "erf" stays the default until a study shows the
    # switch does not change learning (docs/method.md). Checkpoints written
    # before this field existed load as "erf".
    gelu: GeluKind = "erf"


@dataclass(frozen=True)
class AgentConfig:
    """MFQL hyperparameters (ALGORITHM.md). `resolve_agent_config` fills family defaults."""

    alpha: float = 300.0  # initial BC coefficient on the MeanFlow-identity loss
    alpha_schedule: AlphaSchedule = "adaptive"  # adaptive controller or cosine decay
    alpha_update_interval: int = 2000  # steps between alpha-controller records
    alpha_window: int = 20  # recorded MFI losses the controller averages
    alpha_warmup_fraction: float = 0.1  # fraction of offline steps that only record
    alpha_threshold: float = 5.0  # loss ratio that triggers an alpha change
    alpha_increase: float = 1.2  # factor when MFI loss is high
    alpha_decrease: float = 0.8  # factor when MFI loss is low
    num_candidates: int = 5  # K: best-of-K for the critic target and inference
    discount: float = PAPER_DISCOUNT  # gamma of the Bellman target
    tau: float = 0.005  # target-critic EMA rate
    time_steps: int = 10000  # N of the t grid; > 1000 means continuous t
    adaptive_gamma: float = 0.8  # adaptive L2: w = 1 / (delta + c)^(1 - gamma)
    adaptive_c: float = 1e-4  # adaptive L2 constant c
    target_clip: float = 5.0  # |g_tgt| clip of the MFI target
    normalize_q_loss: bool = False  # scale the Q term by 1 / stopgrad(mean|Q|)
    bound_loss_weight: float = 1.0  # weight of the [-1, 1] bound penalty
    actor_lr: float = 1e-4  # peak actor learning rate
    actor_lr_schedule: ActorLrSchedule = "warmup-cosine"  # reference schedule, or constant actor_lr
    actor_warmup_fraction: float = 0.05  # linear warm-up share of offline steps
    actor_min_lr_ratio: float = 0.1  # cosine floor (and online lr) as a share of actor_lr
    critic_lr: float = PAPER_CRITIC_LR  # constant critic learning rate
    schedule_steps: int | None = None  # steps the actor-lr and alpha schedules span (None: the run's)
    mfi_draws: int = 1  # (e, t) draws per state in the MFI loss (1: the paper's single draw)
    flow_time_sampling: FlowTimeSampling = "uniform"  # t of the MFI loss; "linear" is a study option
    # EMA rate of a copy of the policy that acts (evaluation, export, serving); 0 = off, the
    # paper's setting (the trained policy acts). A study option, not in the reference, to test
    # whether step-to-step jitter of the weights (from the single-draw MFI gradient) hurts
    # acting; at 0.001 it changed neither success nor the generator (docs/results/mfql-study.md, the study's
    # `ema` arm). Training is unchanged (the critic's target actions still come from the
    # trained policy).
    policy_ema_rate: float = 0.0
    # Self-distillation anchor (a study option, not in the paper or the reference): the actor
    # loss adds anchor_weight * mean((g(s, e, 1) - sg(T(s, e)))^2), where T is an
    # `anchor_steps`-step deterministic sample of the same network for the same noise e. It
    # gives the one-step output that the Q term moves a per-noise regression target, as FQL's
    # distillation does, so the noisy MFI weight (alpha) can be lowered without the policy
    # leaving the data. 0 = off, the paper's setting.
    anchor_weight: float = 0.0
    anchor_steps: int = 2
    grad_clip: float = 1.0  # global grad-norm clip, per optimiser (MFQL; FQL does not clip)
    flow_steps: int = 10  # FQL only: Euler steps of the BC flow that the one-step policy distils
    # Action chunks (a deviation from ALGORITHM.md, which is H = 1; after Q-chunking, Li, Zhou and
    # Levine 2025, arXiv 2507.07969): the policy generates H consecutive actions as one
    # H * action_dim vector from one noise draw, the critic scores (s, chunk), and the target
    # is the H-step backup sum_{j<H} gamma^j r_{t+j} + gamma^H m Q'(s_{t+H}, best-of-K chunk).
    # 1 = the paper's method, unchanged bit for bit.
    action_horizon: int = 1
    # Acting-time re-noising of MeanFlow candidates (a study option beyond the paper; mfql and
    # bon only; docs/results/best-of-n.md, round 4): each one-step candidate a = clip(g(s, e, 1))
    # is re-noised to this time, z = (1 - t_r) a + t_r e' (e': the candidate's noise reversed),
    # and clip(g(s, z, t_r)) is what the critic ranks, at two network evaluations per
    # candidate. On puzzle-3x3 task2 (bon at 60k steps, the same critic, 50 episodes per seed
    # set) it lifted success from 0.16-0.20 to 0.66-0.80 (t_r 0.3; at 50k and 55k: 0.12 -> 0.54,
    # 0.32 -> 0.60). Evaluation, export and serving act with it; the critic's target keeps
    # one-step candidates unless `renoise_target`. None = off, the paper's one step.
    renoise_time: float | None = None
    # The critic's best-of-K target over re-noised candidates too (needs renoise_time), so the
    # critic values the policy that acts; a study option beyond the paper. On bon task2, from the
    # same 60k checkpoint, it lowered re-noised success at 70k from 0.70 to 0.53 (round 5 of
    # docs/results/best-of-n.md). False: one-step candidates in the target, as the paper.
    renoise_target: bool = False
    # How acting (evaluation, export, serving) ranks the K candidates: by the critic ensemble's
    # mean Q, the paper's and the reference's `sample_actions_best`, or by its minimum over
    # members, a pessimistic choice (a study option beyond the paper; Q-chunking's `q_agg=min`
    # names the same choice). On bon task2 (re-noised 0.3, 100 episodes per checkpoint), min at
    # K = 64 against the served mean at K = 32 lifted the weak checkpoints, 75k: 0.45 -> 0.61,
    # 85k: 0.59 -> 0.73, and was level at the best, 95k: 0.91 -> 0.93, 100k: 0.87 -> 0.87; at
    # 90k and K = 32 both read 0.81-0.82 (docs/results/best-of-n.md, round 7). The critic's
    # target keeps the mean. The q returned with an action is the aggregate it won by.
    critic_aggregate: CriticAggregate = "mean"
    # How the critic's TD target reduces the ensemble: its mean, the paper's and the reference's
    # (and Q-chunking's `q_agg=mean`), or its minimum over members, pessimistic (FQL's and
    # Q-chunking's `q_agg=min`; a study option beyond the paper). It reduces the target
    # critic's Q of the next chunk in every agent and, for bon, also the online critic's scores
    # that pick that chunk among the K candidates, as Q-chunking's `q_agg` does both. On
    # puzzle-3x3 task4 bon's critic reads about -60 far from the goal, where its policy never
    # succeeds (about -100), which the max over K in the target may lift (docs/results/
    # best-of-n.md, rounds 11-12). Acting is set apart, by critic_aggregate.
    target_aggregate: CriticAggregate = "mean"
    # Acting's sampling temperature (evaluation, export, serving; a study option beyond the
    # paper): each candidate's noise is scaled by this factor before the policy, clip(g(s, C e, 1)),
    # so C < 1 draws the K candidates nearer the generator's mode at the same one network
    # evaluation each. On puzzle-3x3 task4 `bon`'s one-step candidates spread half as wide again
    # as a 10-step BC flow's without coming nearer the data, and its best of 32 stopped pressing;
    # at C = 0.5 the same checkpoint (100k, its own critic) went from 0.00 to 0.28 success
    # (docs/results/best-of-n.md, round 13). The critic's target keeps C = 1 unless
    # `noise_scale_target`. 1 = the paper.
    noise_scale: float = 1.0
    # The critic's best-of-K target over candidates from the same scaled noise (needs noise_scale
    # != 1), so the critic values the tempered policy that acts; a study option beyond the paper.
    # It changes the run's maths: a resume keeps the scale. False: unscaled noise in the target.
    noise_scale_target: bool = False
    hyperparameters: HyperparameterSource = "paper"  # which critic lr/discount defaults were used

    @property
    def acting(self) -> Acting:
        """How the run acts (evaluation, export, serving): its acting-only settings together."""
        return Acting(self.renoise_time, self.critic_aggregate, self.noise_scale)

    def __post_init__(self) -> None:
        if self.mfi_draws < 1:
            raise ValueError(f"mfi_draws must be >= 1; got {self.mfi_draws}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ValueError(f"schedule_steps must be >= 1 (or unset); got {self.schedule_steps}")
        if not 0.0 <= self.policy_ema_rate < 1.0:
            raise ValueError(f"policy_ema_rate must be in [0, 1) (0: off); got {self.policy_ema_rate}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0 (0: off); got {self.anchor_weight}")
        if self.action_horizon < 1:
            raise ValueError(
                f"action_horizon must be >= 1 (1: one action per step); got {self.action_horizon}"
            )
        check_renoise_range(self.renoise_time)
        check_critic_aggregate(self.critic_aggregate)
        check_critic_aggregate(self.target_aggregate, "target_aggregate")
        check_noise_scale(self.noise_scale)
        if self.noise_scale_target and self.noise_scale == 1.0:
            raise ValueError(
                "noise_scale_target (--noise-scale-target) draws the target's candidates from noise scaled by "
                "noise_scale: set noise_scale (--noise-scale) to a factor other than 1 too"
            )
        if self.renoise_target and self.renoise_time is None:
            raise ValueError(
                "renoise_target (--renoise-target) re-noises the target's candidates to renoise_time: "
                "set renoise_time (--renoise-time) too"
            )
        if self.anchor_steps < 2:
            raise ValueError(
                f"anchor_steps must be >= 2 (the one-step output anchored to a sample of more steps); "
                f"got {self.anchor_steps}"
            )


def check_renoise_range(renoise_time: float | None) -> None:
    """AgentConfig.renoise_time, and any override of it: a time in (0, 1), or None (one step)."""
    if renoise_time is not None and not 0.0 < renoise_time < 1.0:
        raise ValueError(f"renoise_time must be in (0, 1) (or unset: one step); got {renoise_time}")


def check_noise_scale(noise_scale: float, name: str = "noise_scale") -> None:
    """AgentConfig.noise_scale, and any override of it: a finite factor >= 0 (1: the paper)."""
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (1: unscaled noise); got {noise_scale}")


def check_critic_aggregate(aggregate: str, name: str = "critic_aggregate") -> None:
    """AgentConfig.critic_aggregate (or `name`), and any override of it: one of CriticAggregate."""
    if aggregate not in get_args(CriticAggregate):
        raise ValueError(f"{name} must be one of {', '.join(get_args(CriticAggregate))}; got {aggregate!r}")


@dataclass(frozen=True)
class Acting:
    """How a serving graph acts: what `ServingPolicy` computes besides the weights.

    A run's own is `AgentConfig.acting`; `ActingOverrides` changes it for one evaluation, export
    or study. Every field defaults to the paper's.
    """

    # MeanFlow policies: candidates re-noised to this time in (0, 1) and refined once more
    # (training.agents.common.renoised_actions); None: the paper's one step
    renoise_time: float | None = None
    critic_aggregate: CriticAggregate = "mean"  # how the critic ensemble ranks the K candidates
    noise_scale: float = 1.0  # the candidates' sampling temperature: the factor on their noise

    def __post_init__(self) -> None:
        check_renoise_range(self.renoise_time)
        check_critic_aggregate(self.critic_aggregate)
        check_noise_scale(self.noise_scale)

    @property
    def report(self) -> dict:
        """The fields an evaluation report records: those not at the paper's setting."""
        return {
            **({"renoise_time": self.renoise_time} if self.renoise_time is not None else {}),
            **({"critic_aggregate": self.critic_aggregate} if self.critic_aggregate != "mean" else {}),
            **({"noise_scale": self.noise_scale} if self.noise_scale != 1.0 else {}),
        }

    @property
    def description(self) -> str:
        """'re-noise off, mean, noise x 1': how refusals name it."""
        return f"re-noise {self.renoise_time or 'off'}, {self.critic_aggregate}, noise x {self.noise_scale:g}"


@dataclass(frozen=True)
class ActingOverrides:
    """Acting otherwise than a run's own `Acting` (mfql-eval's, mfql-export's and the studies'
    `--renoise-time`, `--critic-aggregate`, `--noise-scale`); None keeps the run's setting."""

    renoise_time: float | None = None  # a re-noise time in (0, 1), or 0: one step
    critic_aggregate: CriticAggregate | None = None
    noise_scale: float | None = None

    def applied_to(self, acting: Acting) -> Acting:
        return Acting(
            acting.renoise_time if self.renoise_time is None else self.renoise_time or None,
            self.critic_aggregate or acting.critic_aggregate,
            acting.noise_scale if self.noise_scale is None else self.noise_scale,
        )


@dataclass(frozen=True)
class ActingVariant:
    """One more way each evaluation of a run acts (`--also-eval`): the run's networks, on the same
    episodes and seeds, acting as the run does except where a field is set. Acting only, like the
    `mfql-eval` overrides it mirrors (`--renoise-time`, `--critic-aggregate`, `--num-candidates`).
    """

    renoise_time: float | None = None  # a re-noise time in (0, 1), 0: one step; None: as the run
    critic_aggregate: CriticAggregate | None = None  # rank by the ensemble's mean or min; None: as the run
    num_candidates: int | None = None  # K; None: as the run acts (TrainConfig.acting_num_candidates)
    noise_scale: float | None = None  # the candidates' noise scale (>= 0); None: as the run

    # --also-eval's keys, in the order `spec` writes them, and the field each sets
    SPEC_KEYS = {
        "renoise": "renoise_time",
        "aggregate": "critic_aggregate",
        "candidates": "num_candidates",
        "noise": "noise_scale",
    }
    SPEC_HELP = (
        "comma-separated key=value pairs: renoise (a time in (0, 1), or 0: one step), aggregate "
        "(mean or min), candidates (K >= 1), noise (the candidates' noise scale >= 0, 1: unscaled); "
        "e.g. renoise=0.3,aggregate=min,candidates=64"
    )

    def __post_init__(self) -> None:
        if self.renoise_time is not None and not 0.0 <= self.renoise_time < 1.0:
            raise ValueError(f"--also-eval renoise must be in [0, 1) (0: one step); got {self.renoise_time}")
        if self.critic_aggregate is not None and self.critic_aggregate not in get_args(CriticAggregate):
            raise ValueError(f"--also-eval aggregate must be mean or min; got {self.critic_aggregate!r}")
        if self.num_candidates is not None and self.num_candidates < 1:
            raise ValueError(f"--also-eval candidates must be >= 1; got {self.num_candidates}")
        if self.noise_scale is not None:
            check_noise_scale(self.noise_scale, "--also-eval noise")
        if all(getattr(self, name) is None for name in self.SPEC_KEYS.values()):
            raise ValueError(f"--also-eval sets nothing: {self.SPEC_HELP}")

    @classmethod
    def parse(cls, spec: str) -> ActingVariant:
        """`renoise=0.3,aggregate=min,candidates=64` (any of the keys, in any order)."""
        values: dict = {}
        for part in spec.split(","):
            key, equals, value = (text.strip() for text in part.partition("="))
            name = cls.SPEC_KEYS.get(key)
            if not equals or name is None or not value:
                raise ValueError(f"--also-eval {spec!r}: expected {cls.SPEC_HELP}")
            if name in values:
                raise ValueError(f"--also-eval {spec!r}: {key} is given twice")
            try:
                values[name] = {"renoise_time": float, "num_candidates": int, "noise_scale": float}.get(
                    name, str
                )(value)
            except ValueError:
                raise ValueError(f"--also-eval {spec!r}: {key}={value} is not a number") from None
        return cls(**values)

    @property
    def spec(self) -> str:
        """The canonical `--also-eval` text (fixed key order): how configs and logs name it."""
        values = {key: getattr(self, name) for key, name in self.SPEC_KEYS.items()}
        return ",".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in values.items() if value is not None)  # fmt: skip

    @property
    def label(self) -> str:
        """How tables and plots name it: 're-noised 0.3', 'one step, min, K = 64'."""
        parts = []
        if self.renoise_time is not None:
            parts.append("one step" if self.renoise_time == 0 else f"re-noised {self.renoise_time:g}")
        if self.critic_aggregate is not None:
            parts.append(self.critic_aggregate)
        if self.num_candidates is not None:
            parts.append(f"K = {self.num_candidates}")
        if self.noise_scale is not None:
            parts.append(f"noise x {self.noise_scale:g}")
        return ", ".join(parts)

    @property
    def overrides(self) -> ActingOverrides:
        """What it changes of a run's `Acting` (K apart)."""
        return ActingOverrides(self.renoise_time, self.critic_aggregate, self.noise_scale)

    def acting(self, config: TrainConfig) -> tuple[Acting, int]:
        """How a run of `config` acts under this variant, and with how many candidates."""
        return (
            self.overrides.applied_to(config.agent_config.acting),
            self.num_candidates or config.acting_num_candidates,
        )


@dataclass(frozen=True)
class TrainConfig:
    """One training run: what to train on, for how long, and how to log/evaluate."""

    env_name: str = "cube-single-play-singletask-task2-v0"  # OGBench singletask name
    dataset_dir: str = "data"  # folder holding <dataset>.npz and <dataset>-val.npz
    out_dir: str = "runs/mfql"  # run directory
    agent: AgentName = "mfql"  # method (bon, bon-distill: one-step best-of-N)
    seed: int = 0  # seeds networks, noise, batches and evaluation episodes
    offline_steps: int = 1_000_000  # offline gradient steps
    online_steps: int = 0  # offline-to-online gradient steps (one env step each)
    batch_size: int = 256  # transitions per gradient step
    log_every: int = 100  # steps between CSV/TensorBoard rows
    eval_every: int = 100_000  # steps between evaluations (0: only at the end)
    # Wall-clock minutes of training after which the run stops as if its last step were reached
    # (final evaluation and checkpoint), even before `offline_steps`; evaluations and checkpoints
    # do not count, a resume continues the count. None: run every step. Schedules still span offline_steps
    # (or schedule_steps), so a budget-stopped run is the same run stopped early.
    time_budget_minutes: float | None = None
    eval_episodes: int = 50  # evaluation episodes (0 turns evaluation off)
    eval_num_candidates: int | None = None  # K at evaluation (default: agent K)
    # Chunked policies (action_horizon H > 1): evaluation executes the first N actions of each
    # chunk open-loop, then asks for a new chunk (None: N = H, the whole chunk).
    eval_replan_every: int | None = None
    checkpoint_every: int = 50_000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest step directories kept
    threads: int | None = None  # torch intra-op threads (None: torch default)
    precision: Literal["fp32", "bf16"] = "fp32"  # number format of matmuls (resolved from 'auto')
    # Where the networks and the update run: "cpu", "cuda" or "cuda:N" (resolved from 'auto');
    # not the maths: a run may resume on another device.
    device: str = "cpu"
    compile: bool = False  # torch.compile the step's forward passes (speed only; same maths)
    agent_config: AgentConfig = field(default_factory=AgentConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # Where the data comes from when it is not the OGBench name `env_name` (Minari, LeRobot, a
    # transitions file), how its rewards are read, which episodes are held out.
    data: DataConfig = field(default_factory=DataConfig)
    # The env evaluation rolls out in (an OGBench singletask name, minari:<id> or a gymnasium
    # id); None: `env_name` for OGBench data, and no env (offline-only training) for other sources.
    eval_env: str | None = None
    # MeanFlow agents (mfql, bon): every evaluation also acts a second way, on the same episodes
    # and seeds, re-noised at this time in (0, 1), or 0 for one step (beside a run that acts
    # re-noised); logged to evaluations_also.csv, and `mfql-sweep` tables it as a row of its
    # own. One training gives both curves where two arms trained it twice (docs/training.md).
    # None: off. Evaluation only: a resumed run may set it anew.
    also_eval_renoise_time: float | None = None
    # More ways every evaluation also acts (`--also-eval`, ActingVariant.spec each: re-noise
    # time, critic aggregate, K), after the one above; each logged to evaluations_also.csv as
    # the same, tabled by `mfql-sweep` as a row of its own. Evaluation only, like the above.
    also_eval: tuple[str, ...] = ()

    @property
    def evaluation_env(self) -> str | None:
        """The env evaluation and `mfql-eval` build; None: offline only (validation losses instead)."""
        if self.eval_env:
            return self.eval_env
        return self.env_name if self.data.source is None else None

    @property
    def total_steps(self) -> int:
        return self.offline_steps + self.online_steps

    @property
    def acting_num_candidates(self) -> int:
        """K the trained policy acts with: `eval_num_candidates` if the run set it, else the agent's K.

        The two differ when the critic's target uses another K than acting (e.g. a K = 1
        target with best-of-5 actions); evaluation, `mfql-eval` and export all act with this K.
        """
        return self.eval_num_candidates or self.agent_config.num_candidates

    @property
    def replan_every(self) -> int:
        """Actions executed from each chunk before the next is asked for (H unless set)."""
        return self.eval_replan_every or self.agent_config.action_horizon

    def __post_init__(self) -> None:
        horizon = self.agent_config.action_horizon
        if self.eval_replan_every is not None and not 1 <= self.eval_replan_every <= horizon:
            raise ValueError(
                f"eval_replan_every must be between 1 and the action horizon {horizon}; got {self.eval_replan_every}"
            )
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(f"time_budget_minutes must be > 0 (or unset); got {self.time_budget_minutes}")
        if self.also_eval_renoise_time is not None:
            self._check_also_eval()
        self._check_acting_variants()

    def _check_also_eval(self) -> None:
        also = self.also_eval_renoise_time
        if self.agent in FLOW_DISTILLED_AGENTS:
            raise ValueError(f"also_eval_renoise_time (--also-eval-renoise-time) {NO_FLOW_TIME}")
        if not 0.0 <= also < 1.0:
            raise ValueError(f"also_eval_renoise_time must be in [0, 1) (0: one step; or unset); got {also}")
        if (also or None) == self.agent_config.renoise_time:
            acts = "one step" if also == 0 else f"re-noised at {also}"
            raise ValueError(
                f"also_eval_renoise_time {also}: the run already acts {acts}; the second evaluation "
                "must act another way (0: one step, or a time in (0, 1) other than --renoise-time)"
            )

    @property
    def also_eval_variants(self) -> tuple[ActingVariant, ...]:
        """Every other way each evaluation acts: `also_eval_renoise_time`'s, then `also_eval`'s."""
        first = () if self.also_eval_renoise_time is None else (ActingVariant(self.also_eval_renoise_time),)
        return first + tuple(ActingVariant.parse(spec) for spec in self.also_eval)

    def _check_acting_variants(self) -> None:
        """Each variant applies to this agent, acts otherwise than the run, and is unique."""
        seen = {(self.agent_config.acting, self.acting_num_candidates): "the run itself"}
        for index, variant in enumerate(self.also_eval_variants):
            flag = (
                f"--also-eval-renoise-time {variant.renoise_time:g}"
                if index == 0 and self.also_eval_renoise_time is not None
                else f"--also-eval {variant.spec}"
            )
            if self.agent in FLOW_DISTILLED_AGENTS and variant.renoise_time is not None:
                raise ValueError(f"{flag}: renoise {NO_FLOW_TIME}")
            acting = variant.acting(self)
            if acting in seen:
                raise ValueError(
                    f"{flag}: acts as {seen[acting]} already does ({acting[0].description}, K = {acting[1]}); "
                    "every evaluation must act another way"
                )
            seen[acting] = flag


def resolve_agent_config(
    env_name: str, hyperparameters: HyperparameterSource = "paper", agent: str = "mfql", **overrides: object
) -> AgentConfig:
    """Agent config for `env_name`: family table, then the paper/reference choice, then overrides.

    `None` values in `overrides` mean "not given" and keep the default. For `agent="fql"` the
    defaults are FQL's own (Park et al. 2025): its alpha column, lr 3e-4 everywhere, the
    family discount. For `agent="bon"` they are Q-chunking's best-of-n settings (K = 32, H = 5,
    lr 3e-4 constant, the family discount) with the family's MFI time grid. For
    `agent="bon-distill"` they are the same best-of-n settings on FQL's networks and optimiser
    (one Adam, lr 3e-4; its alpha is not read).
    """
    family = task_family(env_name)
    if agent == "bon-distill":
        base = AgentConfig(
            num_candidates=BON_NUM_CANDIDATES,
            action_horizon=BON_ACTION_HORIZON,
            discount=family.discount,
            actor_lr=QC_LR,
            critic_lr=QC_LR,
            hyperparameters="reference",
        )
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if agent == "bon":
        base = AgentConfig(
            num_candidates=BON_NUM_CANDIDATES,
            action_horizon=BON_ACTION_HORIZON,
            discount=family.discount,
            time_steps=family.time_steps,
            actor_lr=QC_LR,
            actor_lr_schedule="constant",
            critic_lr=QC_LR,
            hyperparameters="reference",
        )
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if agent == "fql":
        base = AgentConfig(
            alpha=family.fql_alpha,
            num_candidates=1,
            discount=family.discount,
            actor_lr=FQL_LR,
            critic_lr=FQL_LR,
            hyperparameters="reference",
        )
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if hyperparameters == "paper":
        critic_lr, discount = PAPER_CRITIC_LR, PAPER_DISCOUNT
    else:
        critic_lr, discount = REFERENCE_CRITIC_LR, family.discount
    studied = {"actor_lr": family.actor_lr, "actor_lr_schedule": family.actor_lr_schedule}
    base = AgentConfig(
        alpha=family.alpha,
        num_candidates=family.num_candidates,
        discount=discount,
        time_steps=family.time_steps,
        critic_lr=critic_lr,
        hyperparameters=hyperparameters,
        **{key: value for key, value in studied.items() if value is not None},
    )
    given = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(base, **given)


def config_to_dict(config: object) -> dict:
    """Plain JSON-able dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict) -> TrainConfig:
    """Inverse of `config_to_dict` for a TrainConfig; unknown keys are an error."""
    data = dict(data)
    agent = AgentConfig(**data.pop("agent_config"))
    network_data = dict(data.pop("network"))
    for key in ("mlp_hidden", "critic_hidden"):
        network_data[key] = tuple(network_data[key])
    network_data.setdefault("gelu", "erf")  # written before the field existed: the exact GELU
    # Runs written before `data` existed trained on OGBench files with the dataset's rewards.
    source = dict(data.pop("data", None) or {})
    reward = RewardConfig(**source.pop("reward", {}))
    if source.get("observation_keys") is not None:
        source["observation_keys"] = tuple(source["observation_keys"])
    data["also_eval"] = tuple(data.get("also_eval", ()))  # written before the field: none
    return TrainConfig(
        agent_config=agent,
        network=NetworkConfig(**network_data),
        data=DataConfig(reward=reward, **source),
        **data,
    )
