"""N seeds of one configuration updated as one vectorised step (`torch.func.vmap`).

The agents stay N ordinary agents: each has its own networks, optimisers, random generator,
alpha controller, replay-buffer order, checkpoints and evaluations. What changes is where
their tensors live: every parameter and Adam-state tensor of agent i becomes row i of one
[N, ...] tensor (`StackedSeeds` moves them there once), and one call of
`training.agents.fused_step.fused_update` under `vmap` updates all the rows in place. Each
agent still reads and saves its own tensors (views of its rows), so checkpoints, evaluation
and export work unchanged, and seed i's numbers match a single-seed run of seed i within float
tolerance (tests/training/test_multi_seed.py).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.func import vmap

from training.agents.common import Batch
from training.agents.fused_step import adam_state, check_plain_adam, fused_update


def _stack_rows(tensors: list[Tensor]) -> Tensor:
    """One [N, ...] tensor holding `tensors`, each of which becomes a view of its row."""
    stacked = torch.stack([t.detach() for t in tensors])
    for i, tensor in enumerate(tensors):
        tensor.data = stacked[i]
    return stacked


class StackedSeeds:
    """The update of N same-config agents (one per seed) as one vmapped fused step."""

    def __init__(self, agents: list, compile: bool = False) -> None:
        if len(agents) < 2:
            raise ValueError("StackedSeeds needs at least two agents (one per seed)")
        self.agents = agents
        plans = [agent.update_plan() for agent in agents]
        self.plan = plans[0]
        trained = self.plan.trained
        names = list(self.plan.modules)
        for plan in plans[1:]:
            if list(plan.modules) != names:
                raise ValueError("the seeds' agents must have the same networks")
        self.params = {name: self._stack_module(plans, name) for name in names if name in trained}
        self.fixed = {name: self._stack_module(plans, name) for name in names if name not in trained}
        self.adam = [self._stack_adam(plans, index) for index in range(len(self.plan.groups))]
        for agent in agents:
            agent._fused = None  # a compiled single-seed step held the tensors moved here
        self.plans = plans
        self.hypers = tuple(check_plain_adam(group.optimizer) for group in self.plan.groups)
        step = vmap(partial(_fused_update_of_fields, self.plan, self.hypers))
        self._step = torch.compile(step, dynamic=False) if compile else step

    @staticmethod
    def _stack_module(plans, name: str) -> dict[str, Tensor]:
        per_seed = [dict(plan.modules[name].named_parameters()) for plan in plans]
        return {key: _stack_rows([params[key] for params in per_seed]) for key in per_seed[0]}

    @staticmethod
    def _stack_adam(plans, index: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """(steps, exp_avgs, exp_avg_sqs) of optimiser group `index`, one [N, ...] tensor per parameter;
        each seed's optimiser state holds views of its rows."""
        groups = [plan.groups[index] for plan in plans]
        parameters = [plan.group_parameters(g) for g, plan in zip(groups, plans, strict=True)]
        stacked: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
        for j in range(len(parameters[0])):
            states = [
                adam_state(g.optimizer, params[j]) for g, params in zip(groups, parameters, strict=True)
            ]
            for k, key in enumerate(("step", "exp_avg", "exp_avg_sq")):
                joined = torch.stack([state[k] for state in states])
                for i, (g, params) in enumerate(zip(groups, parameters, strict=True)):
                    g.optimizer.state[params[j]][key] = joined[i]
                stacked[k].append(joined)
        return stacked

    def __call__(self, batches: list[Batch], step: int) -> list[dict[str, float]]:
        """One update of every seed: batches[i] for agent i; returns each agent's info."""
        draws = [
            agent.update_noise(batch.actions.shape[0])
            for agent, batch in zip(self.agents, batches, strict=True)
        ]
        device = self.agents[0].device
        lrs = [agent.learning_rates(step) for agent in self.agents]
        for plan, agent_lrs in zip(self.plans, lrs, strict=True):
            plan.set_learning_rates(agent_lrs)
        alpha_states = [agent.alpha_state(step) for agent in self.agents]
        info = self._step(
            self.params,
            self.fixed,
            self.adam,
            [torch.tensor(column, dtype=torch.float32, device=device) for column in zip(*lrs, strict=True)],
            tuple(torch.stack(field) for field in zip(*(b.tensors() for b in batches), strict=True)),
            tuple(torch.stack(noise) for noise in zip(*(noises for noises, _ in draws), strict=True)),
            torch.stack([t for _, t in draws]),
            {key: torch.stack([s[key] for s in alpha_states]).to(device) for key in alpha_states[0]},
        )
        keys = list(info)
        table = torch.stack([info[key].detach().double() for key in keys], dim=1).tolist()
        return [
            agent.finish_update(step, dict(zip(keys, row, strict=True)), agent_lrs)
            for agent, row, agent_lrs in zip(self.agents, table, lrs, strict=True)
        ]


def _fused_update_of_fields(plan, hypers, params, fixed, adam, lrs, batch_fields, noises, t, alpha_state):
    """`fused_update` with the batch as a tuple of tensors, which vmap can split by seed."""
    return fused_update(plan, hypers, params, fixed, adam, lrs, Batch(*batch_fields), noises, t, alpha_state)
