"""`--jobs` caps the trials at once in a restored round too: the local Ray gets only their CPUs."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")
from training.sweep import runner  # noqa: E402
from training.sweep.runner import Placement, local_cpus, ray_session  # noqa: E402


def test_jobs_give_the_local_ray_the_cpus_of_that_many_trials():
    assert local_cpus(Placement()) is None  # no cap: Ray takes the machine's CPUs
    assert local_cpus(Placement(cpus_per_trial=1, jobs=1)) == 1
    assert local_cpus(Placement(cpus_per_trial=2, jobs=3)) == 6
    assert local_cpus(Placement(cpus_per_trial=0.5, jobs=3)) == 2  # 1.5 CPUs: two whole ones


def test_a_local_session_starts_ray_with_those_cpus_and_a_cluster_keeps_its_own(monkeypatch):
    calls = []
    monkeypatch.setattr(runner.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(runner.ray, "shutdown", lambda: None)
    with ray_session(None, 1):
        pass
    with ray_session("10.0.0.1:6379", 1):
        pass
    local, cluster = calls
    assert local["num_cpus"] == 1 and "address" not in local
    assert cluster["address"] == "10.0.0.1:6379" and "num_cpus" not in cluster
