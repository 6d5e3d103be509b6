"""Step-dependent quantities of MFQL: the actor learning rate and the BC coefficient alpha."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from training.config import AgentConfig


def schedule_horizon(offline_steps: int, config: AgentConfig) -> int:
    """The step count the schedules span: the run's offline steps, or `schedule_steps` if set.

    A 30k-step run with schedule_steps = 1M trains "as if 1M steps, stopped early"
    (ALGORITHM.md, "Schedules depend on the total step count").
    """
    return config.schedule_steps or offline_steps


def actor_learning_rate(update_index: int, offline_steps: int, config: AgentConfig) -> float:
    """Linear warm-up, cosine decay to min_ratio * lr over the offline steps, then the floor;
    or `actor_lr` throughout with `actor_lr_schedule = 'constant'` (a study option: FQL's
    constant-lr regime, not the reference's).

    `update_index` counts from 0 (optax's schedule count), so the very first update of a
    run with warm-up uses lr 0, as the reference's schedule does. `offline_steps` is the
    schedule's horizon (`schedule_horizon`).
    """
    peak = config.actor_lr
    if config.actor_lr_schedule == "constant":
        return peak
    floor = peak * config.actor_min_lr_ratio
    if update_index > offline_steps:
        return floor  # offline-to-online fine-tuning keeps the minimum
    warmup = int(offline_steps * config.actor_warmup_fraction)
    if warmup > 0 and update_index <= warmup:
        return update_index / warmup * peak
    progress = (update_index - warmup) / max(offline_steps - warmup, 1)
    progress = min(max(progress, 0.0), 1.0)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_alpha(step: int, offline_steps: int, config: AgentConfig) -> float:
    """The alternative alpha schedule: cosine decay from alpha to 0.1 alpha over offline steps."""
    low = 0.1 * config.alpha
    progress = min(step / max(offline_steps, 1), 1.0)
    return low + (config.alpha - low) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class AlphaController:
    """Adaptive alpha (ALGORITHM.md, "Adaptive BC coefficient alpha").

    Every `alpha_update_interval` steps the current MFI loss is compared with the average of
    the losses recorded so far (at least two, as in the reference), alpha moves by x1.2 or
    x0.8 within [0.1 alpha0, 10 alpha0], and then the loss joins the window. During the
    warm-up (first 10% of offline steps) losses are only recorded. Unlike the reference,
    the average is over the values actually recorded, not over a zero-padded buffer.
    """

    config: AgentConfig
    offline_steps: int
    alpha: float = 0.0
    history: deque | None = None

    def __post_init__(self) -> None:
        if self.alpha == 0.0:
            self.alpha = self.config.alpha
        if self.history is None:
            self.history = deque(maxlen=self.config.alpha_window)

    def due(self, step: int) -> bool:
        """Whether `step` (1-based) is a recording step; the caller then passes the MFI loss."""
        return self.config.alpha_schedule == "adaptive" and step % self.config.alpha_update_interval == 0

    def value(self, step: int) -> float:
        if self.config.alpha_schedule == "cosine":
            return cosine_alpha(step, self.offline_steps, self.config)
        return self.alpha

    def warming_up(self, step: int) -> bool:
        return step < int(self.offline_steps * self.config.alpha_warmup_fraction)

    def record(self, step: int, mfi_loss: float) -> float:
        """Record the MFI loss at a due step, adapt alpha after warm-up, return alpha for this step."""
        if not self.warming_up(step) and len(self.history) >= 2:
            average = sum(self.history) / len(self.history)
            low, high = 0.1 * self.config.alpha, 10.0 * self.config.alpha
            if mfi_loss > self.config.alpha_threshold * average:
                self.alpha = min(self.alpha * self.config.alpha_increase, high)
            elif mfi_loss < average / self.config.alpha_threshold:
                self.alpha = max(self.alpha * self.config.alpha_decrease, low)
        self.history.append(mfi_loss)
        return self.alpha

    def tensor_state(self, step: int) -> dict[str, Tensor]:
        """What `adapted_alpha` needs to make step `step`'s decision inside a compiled graph.

        float64 throughout, so the graph's comparisons and products are the host's own.
        """
        adapts = self.due(step) and not self.warming_up(step) and len(self.history) >= 2
        return {
            "alpha": torch.tensor(self.value(step), dtype=torch.float64),
            "history_sum": torch.tensor(float(sum(self.history)), dtype=torch.float64),
            "count": torch.tensor(float(max(len(self.history), 1)), dtype=torch.float64),
            "adapts": torch.tensor(adapts),
        }

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = float(state["alpha"])
        self.history = deque((float(x) for x in state["history"]), maxlen=self.config.alpha_window)


def adapted_alpha(state: dict[str, Tensor], mfi_loss: Tensor, config: AgentConfig) -> Tensor:
    """`AlphaController.record`'s decision as tensor operations: alpha for this step.

    `state` is `AlphaController.tensor_state(step)`; where it does not adapt (not a due step,
    warm-up, fewer than two losses recorded) this is the current alpha. The host controller
    records the same loss after the step (`finish_update`), so it stays the state of record.
    """
    loss = mfi_loss.to(torch.float64)
    average = state["history_sum"] / state["count"]
    alpha = state["alpha"]
    raised = torch.clamp(alpha * config.alpha_increase, max=10.0 * config.alpha)
    lowered = torch.clamp(alpha * config.alpha_decrease, min=0.1 * config.alpha)
    adapted = torch.where(
        loss > config.alpha_threshold * average,
        raised,
        torch.where(loss < average / config.alpha_threshold, lowered, alpha),
    )
    return torch.where(state["adapts"], adapted, alpha)
