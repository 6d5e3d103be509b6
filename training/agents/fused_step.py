"""One training update as one function of tensors: losses, backward, clipped Adam, EMA and alpha.

`agent.update` runs a step as separate PyTorch calls (forward, `backward`, `clip_grad_norm_`,
fused Adam, EMA lerp, the alpha controller on the host), and at the small shapes of RL
networks each call's overhead is a large share of the step. `fused_update` writes the same
maths as one function of the agent's tensors, gradients by `torch.func.grad_and_value`, so
that `torch.compile` turns the whole update into one program (`FusedUpdate(agent,
compile=True)`) and `torch.func.vmap` runs it for several seeds at once
(`training.multi_seed`).

The function updates the agent's own tensors in place: module parameters, the Adam state in
`optimizer.state` and the alpha controller. Checkpoints, evaluation, export and the eager
`agent.update` see exactly what they would after an eager step, so a run can switch between
the two paths at any step. Nothing here changes the maths:
tests/training/test_fused_step.py holds every path to the eager one within float tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import grad_and_value

from training.agents.common import Batch, BoundModule


@dataclass(frozen=True)
class OptimizerGroup:
    """An Adam over the parameters of `modules` (in order), with gradient-norm clipping if `clip`.

    `norm_key` names the info entry that reports the gradient norm before clipping.
    """

    optimizer: torch.optim.Optimizer
    modules: tuple[str, ...]
    clip: float | None = None
    norm_key: str | None = None


@dataclass(frozen=True)
class UpdatePlan:
    """What an agent's update trains, and how: the fused step's view of an agent.

    `objective(nets, batch, noises, t, alpha_state)` returns (the loss to differentiate, an
    info dict of 0-d tensors) for the networks in `nets` (name -> callable module);
    `emas` lists (target module, online module, rate) applied after the optimiser step.
    """

    modules: dict[str, nn.Module]
    groups: tuple[OptimizerGroup, ...]
    emas: tuple[tuple[str, str, float], ...]
    objective: Callable

    @property
    def trained(self) -> set[str]:
        """The modules some optimiser trains (the rest, target critic and acting copy, follow EMAs)."""
        return {name for group in self.groups for name in group.modules}

    def group_parameters(self, group: OptimizerGroup) -> list[Tensor]:
        """The group's parameters in its optimiser's order."""
        return [p for name in group.modules for p in self.modules[name].parameters()]

    def set_learning_rates(self, lrs: list[float]) -> None:
        """Write this step's rates into the optimisers, as the eager step does (checkpoints keep them)."""
        for group, lr in zip(self.groups, lrs, strict=True):
            for param_group in group.optimizer.param_groups:
                param_group["lr"] = lr


def target_emas(agent) -> tuple[tuple[str, str, float], ...]:
    """The EMAs every agent keeps: the target critic's, and the acting policy's when it has one."""
    emas = [("target_critic", "critic", agent.config.tau)]
    if agent.acting_policy is not agent.policy:
        emas.append(("acting_policy", "policy", agent.config.policy_ema_rate))
    return tuple(emas)


def adam_state(optimizer: torch.optim.Optimizer, parameter: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(step, exp_avg, exp_avg_sq) of `parameter` in `optimizer.state`, created as torch's Adam does."""
    state = optimizer.state[parameter]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device)
        state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
    return state["step"], state["exp_avg"], state["exp_avg_sq"]


def check_plain_adam(optimizer: torch.optim.Optimizer) -> tuple[float, float, float]:
    """(beta1, beta2, eps) of an Adam the fused step can reproduce: no weight decay, amsgrad or maximize."""
    group = optimizer.param_groups[0]
    if group.get("weight_decay", 0) or group.get("amsgrad") or group.get("maximize"):
        raise ValueError("the fused step implements plain Adam (no weight decay, amsgrad or maximize)")
    beta1, beta2 = group["betas"]
    return float(beta1), float(beta2), float(group["eps"])


# Per-tensor loops rather than torch._foreach_* kernels: vmap (several seeds) has batching rules
# for the plain ops only, and torch.compile fuses the loops into the same few kernels.


def clip_by_total_norm_(grads: list[Tensor], max_norm: float) -> Tensor:
    """`nn.utils.clip_grad_norm_` on a list of gradients; returns the norm before clipping."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficient)
    return total


def adam_step_(
    params: list[Tensor],
    grads: list[Tensor],
    state: tuple[list[Tensor], list[Tensor], list[Tensor]],
    lr: Tensor,
    hyper: tuple[float, float, float],
) -> None:
    """torch.optim.Adam's update (bias-corrected, eps outside the square root), in place."""
    steps, exp_avgs, exp_avg_sqs = state
    beta1, beta2, eps = hyper
    for param, grad, step, exp_avg, exp_avg_sq in zip(
        params, grads, steps, exp_avgs, exp_avg_sqs, strict=True
    ):
        step.add_(1.0)
        # lerp_ and addcmul_ written out: vmap has batching rules for these ops, not for those
        exp_avg.add_((grad - exp_avg) * (1 - beta1))
        exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
        bias_correction1 = 1 - beta1**step
        denominator = exp_avg_sq.sqrt() / (1 - beta2**step).sqrt() + eps
        param.add_(exp_avg / denominator * (-lr / bias_correction1))


def ema_(targets: list[Tensor], sources: list[Tensor], rate: float) -> None:
    """target <- (1 - rate) target + rate source, in place."""
    for target, source in zip(targets, sources, strict=True):
        target.add_((source - target) * rate)  # lerp_, in ops vmap batches


def fused_update(
    plan: UpdatePlan,
    hypers: tuple[tuple[float, float, float], ...],
    params: dict[str, dict[str, Tensor]],
    fixed: dict[str, dict[str, Tensor]],
    adam: list[tuple[list[Tensor], list[Tensor], list[Tensor]]],
    lrs: list[Tensor],
    batch: Batch,
    noises: tuple[Tensor, ...],
    t: Tensor,
    alpha_state: dict[str, Tensor],
) -> dict[str, Tensor]:
    """One update of `plan`'s networks, in place; returns the step's info as 0-d tensors.

    `params` holds the trained modules' parameters (name -> parameter name -> tensor), `fixed`
    the others' (target critic, acting EMA copy); `adam[i]`, `lrs[i]` and `hypers[i]` (Adam's
    beta1, beta2, eps) belong to plan.groups[i].
    """

    def objective(trained: dict[str, dict[str, Tensor]]):
        nets = {name: BoundModule(plan.modules[name], trained[name]) for name in trained}
        nets.update({name: BoundModule(plan.modules[name], fixed[name]) for name in fixed})
        return plan.objective(nets, batch, noises, t, alpha_state)

    grads, (_, info) = grad_and_value(objective, has_aux=True)(params)
    info = dict(info)
    with torch.no_grad():
        for group, state, lr, hyper in zip(plan.groups, adam, lrs, hypers, strict=True):
            group_params = [p for name in group.modules for p in params[name].values()]
            group_grads = [g for name in group.modules for g in grads[name].values()]
            if group.clip is not None:
                norm = clip_by_total_norm_(group_grads, group.clip)
                if group.norm_key:
                    info[group.norm_key] = norm
            adam_step_(group_params, group_grads, state, lr, hyper)
        for target, online, rate in plan.emas:
            source = params[online] if online in params else fixed[online]
            ema_(list(fixed[target].values()), list(source.values()), rate)
    return info


class FusedUpdate:
    """`agent.update(batch, step)` through `fused_update`, compiled once with `compile=True`.

    The first call compiles (a minute or more on a CPU; TORCHINDUCTOR_CACHE_DIR keeps the
    result for later runs); later calls run one program per step.
    """

    def __init__(self, agent, compile: bool = True, mode: str | None = None) -> None:
        self.agent = agent
        self.plan: UpdatePlan = agent.update_plan()
        trained = self.plan.trained
        # Detached aliases of the parameters (same storage): the step writes them in place, and
        # the compiled program is one graph with no outer autograd to record.
        tensors = {
            name: {key: p.detach() for key, p in module.named_parameters()}
            for name, module in self.plan.modules.items()
        }
        self.params = {name: params for name, params in tensors.items() if name in trained}
        self.fixed = {name: params for name, params in tensors.items() if name not in trained}
        self.adam = [self._adam_lists(group) for group in self.plan.groups]
        self.hypers = tuple(check_plain_adam(group.optimizer) for group in self.plan.groups)
        # mode: torch.compile's, e.g. "reduce-overhead" (CUDA graphs) on a GPU; None is its default.
        # fullgraph: one program or a compile error before anything runs, so a failed compile
        # (no C++ compiler, an unsupported op) can fall back to the eager step on the same inputs.
        self._step = (
            torch.compile(fused_update, dynamic=False, mode=mode, fullgraph=True) if compile else fused_update
        )
        self.device = next(p for params in self.params.values() for p in params.values()).device

    def _adam_lists(self, group: OptimizerGroup) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """(steps, exp_avgs, exp_avg_sqs) of the group's parameters, in the group's order."""
        states = [adam_state(group.optimizer, p) for p in self.plan.group_parameters(group)]
        return [s[0] for s in states], [s[1] for s in states], [s[2] for s in states]

    def __call__(self, batch: Batch, step: int) -> dict[str, float]:
        agent = self.agent
        noises, t = agent.update_noise(batch.actions.shape[0])
        if self.device.type != "cpu":  # the agents draw their noise on the CPU, in one stream
            noises, t = tuple(n.to(self.device) for n in noises), t.to(self.device)
        lrs = agent.learning_rates(step)
        self.plan.set_learning_rates(lrs)
        alpha_state = {key: value.to(self.device) for key, value in agent.alpha_state(step).items()}
        inputs = (
            self.plan,
            self.hypers,
            self.params,
            self.fixed,
            self.adam,
            [torch.tensor(lr, dtype=torch.float32, device=self.device) for lr in lrs],
            batch,
            noises,
            t,
            alpha_state,
        )
        try:
            info = self._step(*inputs)
        except Exception as exc:  # noqa: BLE001 - any compile failure: the eager step is the same maths
            if self._step is fused_update:
                raise
            warnings.warn(
                f"torch.compile of the update failed ({type(exc).__name__}: {exc}); training eagerly",
                stacklevel=2,
            )
            self._step = fused_update
            info = self._step(*inputs)
        keys = list(info)
        values = torch.stack([info[key].detach().double() for key in keys]).tolist()
        return agent.finish_update(step, dict(zip(keys, values, strict=True)), lrs)
