"""ModelRepository: scanning, version resolution, failures kept apart, hot reload, drain and unload."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from server.errors import InvalidInput, NotFound, Unavailable
from server.metrics import ServerMetrics
from server.repository import ModelRepository, scan_repository
from server.settings import ServerSettings
from tests.server.bundles import rewrite_metadata, write_test_bundle
from tests.server.live import eventually

OBSERVATION = np.linspace(-1, 1, 28, dtype=np.float32)


@pytest.fixture
def repository_dir(tmp_path):
    root = tmp_path / "repository"
    write_test_bundle(root / "cube" / "1", weights_seed=1)
    return root


@pytest.fixture
async def repositories():
    made = []
    yield made
    for repository in made:
        await repository.close()


async def open_repository(root, made, metrics: ServerMetrics | None = None, **options) -> ModelRepository:
    settings = ServerSettings(model_repository=root, max_batch_size=4, repository_poll_s=0, **options)
    repository = ModelRepository(settings, observer_for=metrics.observer if metrics else None)
    made.append(repository)
    await repository.reload()
    return repository


async def action_of(
    repository: ModelRepository, name: str | None = "cube", version=None
) -> tuple[int, np.ndarray]:
    model = repository.resolve(name, version)
    result = await model.act(model.check_request(OBSERVATION, seed=7), 0.0)
    return result.version, result.actions[0]


def test_scan_finds_name_and_version_directories_only(repository_dir):
    (repository_dir / "cube" / ".2.partial").mkdir()  # being copied in
    (repository_dir / "cube" / "latest").mkdir()
    (repository_dir / ".hidden" / "1").mkdir(parents=True)
    (repository_dir / "README.md").write_text("not a model")
    assert list(scan_repository(repository_dir)) == [("cube", 1)]


async def test_newest_ready_version_serves_unless_one_is_named(repository_dir, repositories):
    write_test_bundle(repository_dir / "cube" / "2", weights_seed=2)
    repository = await open_repository(repository_dir, repositories)
    assert repository.versions("cube") == [1, 2]
    newest, by_default = await action_of(repository)
    pinned, by_version = await action_of(repository, version="1")
    assert (newest, pinned) == (2, 1) and not np.array_equal(by_default, by_version)
    with pytest.raises(NotFound, match=r"model 'cube' has no version '5'; available versions: \['1', '2'\]"):
        repository.resolve("cube", "5")
    with pytest.raises(InvalidInput, match="version: expected a positive integer"):
        repository.resolve("cube", "latest")
    with pytest.raises(NotFound, match=r"model 'nope' not found; available models: \['cube'\]"):
        repository.resolve("nope")


async def test_a_bad_bundle_is_reported_failed_and_the_others_keep_serving(repository_dir, repositories):
    write_test_bundle(repository_dir / "broken" / "1", "broken")
    rewrite_metadata(repository_dir / "broken" / "1", obs_dim=None)
    repository = await open_repository(repository_dir, repositories)
    listing = {m["name"]: m for m in repository.listing()["models"]}
    assert listing["cube"]["ready"] and listing["cube"]["versions"] == ["1"]
    assert not listing["broken"]["ready"] and listing["broken"]["versions"] == []
    assert "obs_dim: Field required" in listing["broken"]["failed"][0]["error"]
    with pytest.raises(NotFound, match="version 1 failed to load: .*obs_dim: Field required"):
        repository.resolve("broken")
    assert repository.counts() == (1, 1)


async def test_default_model_is_configured_or_the_first_by_name(repository_dir, repositories):
    write_test_bundle(repository_dir / "arm" / "1", "arm", 7, 2, selftest=False)
    repository = await open_repository(repository_dir, repositories)
    assert repository.default_model() == "arm" and repository.listing()["default"] == "arm"
    configured = await open_repository(repository_dir, repositories, default_model="cube")
    assert configured.resolve(None).name == "cube"


async def test_hot_reload_swaps_in_a_new_version_and_never_a_broken_one(repository_dir, repositories):
    metrics = ServerMetrics()
    repository = await open_repository(repository_dir, repositories, metrics)
    old = repository.resolve("cube")
    write_test_bundle(repository_dir / "cube" / "2", weights_seed=2)
    assert await repository.reload() == {"loaded": ["cube/2"], "failed": [], "unloaded": []}
    assert (await action_of(repository))[0] == 2
    broken = write_test_bundle(repository_dir / "cube" / "3", weights_seed=3)
    (broken / "policy.onnx").write_bytes(b"tampered")
    assert (await repository.reload())["failed"] == ["cube/3"]
    assert (await action_of(repository))[0] == 2  # the working version keeps serving
    assert await repository.reload() == {"loaded": [], "failed": [], "unloaded": []}  # not retried unchanged
    shutil.rmtree(broken)
    shutil.rmtree(repository_dir / "cube" / "2")
    assert 'mfql_queue_depth{model="cube",version="2"}' in metrics.render()[0].decode()
    assert (await repository.reload())["unloaded"] == ["cube/2"]
    assert (await action_of(repository))[0] == 1 and repository.resolve("cube") is old
    # the retired version drains and unloads in the background
    await eventually(lambda: 'version="2"' not in metrics.render()[0].decode())
    assert repository.listing()["models"][0]["failed"] == []


async def test_changed_content_of_a_serving_version_fails_without_replacing_it(repository_dir, repositories):
    repository = await open_repository(repository_dir, repositories)
    before = await action_of(repository)
    rewrite_metadata(repository_dir / "cube" / "1", max_num_candidates=0)
    assert (await repository.reload())["failed"] == ["cube/1"]
    after = await action_of(repository)
    assert after[0] == 1 and np.array_equal(after[1], before[1])


async def test_drain_stops_new_requests_and_waits_for_queued_ones(repository_dir, repositories):
    repository = await open_repository(repository_dir, repositories, max_queue_delay_us=200_000)
    model = repository.resolve("cube")
    queued = asyncio.ensure_future(model.act(model.check_request(OBSERVATION, seed=1), 0.0))
    await eventually(lambda: model.batcher.pending == 1)
    assert await repository.drain(timeout_s=5.0)
    assert queued.done() and queued.result().actions.shape == (1, 5)
    assert not repository.ready
    with pytest.raises(Unavailable, match="shutting down"):
        repository.resolve("cube")


async def test_a_half_copied_version_fails_then_loads_once_its_copy_completes(repository_dir, repositories):
    repository = await open_repository(repository_dir, repositories)
    complete = write_test_bundle(repository_dir.parent / "staging" / "2", weights_seed=2)
    half = repository_dir / "cube" / "2"
    half.mkdir()
    for name in ("metadata.json", "SHA256SUMS"):  # copied straight in, not under a hidden name
        shutil.copy2(complete / name, half / name)
    assert (await repository.reload())["failed"] == ["cube/2"]
    assert repository.resolve("cube").version == 1
    for path in complete.iterdir():  # the copy completes: the directory's content changed
        shutil.copy2(path, half / path.name)
    assert (await repository.reload())["loaded"] == ["cube/2"]  # retried without being asked to
    assert (await action_of(repository))[0] == 2 and repository.listing()["models"][0]["failed"] == []
