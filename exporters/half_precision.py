"""`--fp16`: the serving computation in float16 behind float32 inputs and outputs.

Observation normalisation stays in float32: raw observations can be large (positions in
centimetres, joint velocities) and float16 would round them before the statistics are
removed. Everything after it (policy, critic, best-of-K) runs in float16.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from training.inference import ServingPolicy


class _NormalizeToHalf(nn.Module):
    def __init__(self, normalizer: nn.Module) -> None:
        super().__init__()
        self.normalizer = normalizer

    def forward(self, observation: Tensor) -> Tensor:
        return self.normalizer(observation).half()


class Float16ServingPolicy(nn.Module):
    """Same signature as ServingPolicy (float32 in, float32 out), float16 inside."""

    def __init__(self, module: ServingPolicy) -> None:
        super().__init__()
        self.inner = ServingPolicy(
            _NormalizeToHalf(copy.deepcopy(module.normalizer)),
            copy.deepcopy(module.policy).half(),
            copy.deepcopy(module.critic).half(),
            module.action_dim,
            module.action_horizon,
            # a run trained on scaled actions maps them back to the data's units, as in float32
            (module.action_low.tolist(), module.action_high.tolist()) if module.scaled else None,
            module.acting,
        )

    def forward(self, observation: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        action, q_value, candidates = self.inner(observation, noise.half())
        return action.float(), q_value.float(), candidates.float()
