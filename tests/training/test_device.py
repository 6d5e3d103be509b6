"""`mfql-train --device`: its resolution, its errors, and a step whose every tensor follows the networks.

No GPU here: PyTorch's `meta` device stands in for one. A tensor left on the CPU meets a meta
tensor in an op and fails just as it would meet a CUDA one, so a step that runs on meta
draws its noise, flow times and batch on the networks' device. benchmarks/gpu_speed.py runs
mfql-train on a real GPU when a device is lent.
"""

from __future__ import annotations

import pytest
import torch

from training.agents import build_agent
from training.agents.common import Batch
from training.config import NetworkConfig, resolve_agent_config
from training.precision import resolve_device
from training.train import main as train_main

OBS, ACT, B = 7, 2, 8


def test_auto_is_cuda_only_where_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; expected one of \['cpu', 'cuda', 'auto'\]"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_mfql_train_refuses_a_device_it_does_not_have_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_main(["--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfql-train: --device cuda: this torch") and "use --device cpu" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("agent_name", ["mfql", "fql", "bon"])
def test_a_step_on_another_device_keeps_every_tensor_there(agent_name):
    config = resolve_agent_config("cube-single-play-singletask-task2-v0", "reference", agent=agent_name)
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    agent = build_agent(agent_name, OBS, ACT, config, network, 100, 0)
    cpu_noises, cpu_t = agent.update_noise(B)
    agent.to_device("meta")
    assert {p.device.type for m in agent.modules().values() for p in m.parameters()} == {"meta"}
    assert agent.generator.device.type == "cpu"  # the draws stay on the CPU generator
    noises, t = agent.update_noise(B)
    assert {n.device.type for n in noises} == {"meta"} and t.device.type == "meta"
    assert [n.shape for n in noises] == [n.shape for n in cpu_noises] and t.shape == cpu_t.shape
    d = agent.chunk_dim
    batch = Batch(
        torch.zeros(B, OBS), torch.zeros(B, d), torch.zeros(B), torch.ones(B), torch.zeros(B, OBS)
    ).to("meta")
    losses = agent.step_losses(agent.nets(), batch, noises, t)[:-1]
    total = sum(losses)
    assert total.device.type == "meta"
    total.backward()  # the backward pass too: a CPU tensor anywhere in the graph would fail
    assert all(p.grad is None or p.grad.device.type == "meta" for p in agent.policy.parameters())
