"""The model repository: `DIR/<model-name>/<version>/` bundles, loaded, verified, hot-reloaded, drained.

A scan compares what is on disk with what serves. A new (or changed) version directory is
verified and loaded in a worker thread while everything else keeps serving, then swapped in
atomically; a version that fails is logged, reported in `listing()` with its reason, and
never replaces a working one. A removed version stops taking requests at once, finishes
what it has queued, then unloads. The newest ready version serves unless a request names one.

Directories that are not `<name>/<positive int>` are ignored, so copying a bundle in as a
hidden directory (`.3.partial`) and renaming it to `3` when complete is the safe way to publish.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.batcher import BatchObserver
from server.bundle_loader import MODEL_NAME_PATTERN
from server.errors import BundleError, InvalidInput, NotFound, Unavailable
from server.served_model import ModelVersion, load_model_version
from server.settings import ServerSettings

logger = logging.getLogger("mfql.repository")

VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
Fingerprint = tuple[tuple[str, int, int], ...]  # (file name, size, mtime_ns) of every file
Key = tuple[str, int]  # (model name, version)
Loader = Callable[[str, int, Path, ServerSettings, BatchObserver | None], ModelVersion]


@dataclass(frozen=True)
class Failure:
    fingerprint: Fingerprint
    reason: str


def fingerprint(directory: Path) -> Fingerprint:
    entries = []
    for path in sorted(directory.iterdir()):
        stat = path.stat()
        entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def scan_repository(root: Path) -> dict[Key, Fingerprint]:
    """Every `<name>/<version>/` directory under `root` with its fingerprint."""
    found = {}
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or not MODEL_NAME_PATTERN.match(model_dir.name):
            continue
        for version_dir in model_dir.iterdir():
            if version_dir.is_dir() and VERSION_PATTERN.match(version_dir.name):
                try:
                    found[(model_dir.name, int(version_dir.name))] = fingerprint(version_dir)
                except OSError:  # removed while we looked: the next scan sees the outcome
                    continue
    return found


class ModelRepository:
    def __init__(
        self,
        settings: ServerSettings,
        *,
        observer_for: Callable[[str, int], BatchObserver] | None = None,
        loader: Loader = load_model_version,
        on_change: Callable[[ModelRepository], None] | None = None,
    ):
        self.root = settings.repository_path
        self.settings = settings
        self._observer_for = observer_for
        self._loader = loader
        self._on_change = on_change
        self._ready: dict[Key, ModelVersion] = {}
        self._fingerprints: dict[Key, Fingerprint] = {}
        self._failed: dict[Key, Failure] = {}
        self._loading: set[Key] = set()
        self._retiring: set[asyncio.Task] = set()
        self._scan_lock = asyncio.Lock()
        self.accepting = True  # False while the server drains for shutdown
        self.initial_load_done = False

    # ---- serving -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.accepting and self.initial_load_done and bool(self._ready)

    def model_names(self) -> list[str]:
        return sorted({name for name, _ in self._ready})

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self._ready if n == name)

    def default_model(self) -> str:
        """MFQL_DEFAULT_MODEL if set, else the only model, else the first ready model by name."""
        if self.settings.default_model is not None:
            return self.settings.default_model
        names = self.model_names()
        if not names:
            raise Unavailable("no model is ready yet", retry_after=1)
        return names[0]

    def resolve(self, name: str | None, version: Any = None) -> ModelVersion:
        """The version that serves a request; NotFound lists what exists, Unavailable says why not now."""
        if not self.accepting:
            raise Unavailable("server is shutting down; send requests to another replica", retry_after=5)
        name = self.default_model() if name is None else name
        versions = self.versions(name)
        if version is not None and version != "":
            number = self._version_number(version)
            if (name, number) in self._ready:
                return self._ready[(name, number)]
            if versions:
                raise NotFound(
                    f"model {name!r} has no version '{number}'"
                    f"{self._failure_note(name, number)}; available versions: {[str(v) for v in versions]}"
                )
        if versions:
            return self._ready[(name, versions[-1])]
        if any(key[0] == name for key in self._loading):
            raise Unavailable(f"model {name!r} is still loading", retry_after=1)
        raise NotFound(
            f"model {name!r} not found{self._failure_note(name)}; available models: {self.model_names()}"
        )

    def _version_number(self, version: Any) -> int:
        text = str(version)
        if not VERSION_PATTERN.match(text):
            raise InvalidInput(f"version: expected a positive integer, got {version!r}")
        return int(text)

    def _failure_note(self, name: str, version: int | None = None) -> str:
        reasons = [
            f"version {v} failed to load: {failure.reason}"
            for (n, v), failure in sorted(self._failed.items())
            if n == name and (version is None or v == version)
        ]
        return f" ({'; '.join(reasons)})" if reasons else ""

    def listing(self) -> dict[str, Any]:
        names = sorted({name for name, _ in [*self._ready, *self._failed, *self._loading]})
        try:
            default = self.default_model()
        except Unavailable:
            default = None
        models = []
        for name in names:
            versions = self.versions(name)
            models.append(
                {
                    "name": name,
                    "versions": [str(v) for v in versions],
                    "serving_version": str(versions[-1]) if versions else None,
                    "ready": bool(versions) and self.accepting,
                    "default": name == default,
                    "loading": sorted(str(v) for n, v in self._loading if n == name),
                    "failed": [
                        {"version": str(v), "error": failure.reason}
                        for (n, v), failure in sorted(self._failed.items())
                        if n == name
                    ],
                }
            )
        return {"default": default, "models": models}

    def all_versions(self) -> list[ModelVersion]:
        return list(self._ready.values())

    def counts(self) -> tuple[int, int]:
        return len(self._ready), len(self._failed)

    # ---- loading and hot reload --------------------------------------------------------

    async def reload(self, retry_failed: bool = False) -> dict[str, list[str]]:
        """Bring what serves in line with the disk; returns what changed, as "name/version" lists."""
        async with self._scan_lock:
            on_disk = await asyncio.to_thread(scan_repository, self.root)
            changes: dict[str, list[str]] = {"loaded": [], "failed": [], "unloaded": []}
            for key in sorted(set(self._ready) - set(on_disk)):
                self._retire(key, self._ready.pop(key))
                self._fingerprints.pop(key, None)
                changes["unloaded"].append(f"{key[0]}/{key[1]}")
            for key in set(self._failed) - set(on_disk):
                del self._failed[key]
            for key, print_ in sorted(on_disk.items()):
                if self._fingerprints.get(key) == print_:
                    continue
                failure = self._failed.get(key)
                if failure is not None and failure.fingerprint == print_ and not retry_failed:
                    continue
                outcome = "loaded" if await self._load(key, print_) else "failed"
                changes[outcome].append(f"{key[0]}/{key[1]}")
            self.initial_load_done = True
        if self._on_change is not None:
            self._on_change(self)
        return changes

    async def _load(self, key: Key, print_: Fingerprint) -> bool:
        name, version = key
        observer = self._observer_for(name, version) if self._observer_for else None
        self._loading.add(key)
        try:
            loaded = await asyncio.to_thread(
                self._loader, name, version, self.root / name / str(version), self.settings, observer
            )
        except Exception as exc:  # noqa: BLE001 - a bad bundle must never take the server down
            reason = str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"
            self._failed[key] = Failure(print_, reason)
            kept = " (the previous content keeps serving)" if key in self._ready else ""
            logger.error(
                f"model version failed to load{kept}",
                extra={"model": name, "version": version, "error": reason},
            )
            return False
        finally:
            self._loading.discard(key)
        previous = self._ready.get(key)
        self._ready[key] = loaded  # the swap: one dict assignment on the event loop thread
        self._fingerprints[key] = print_
        self._failed.pop(key, None)
        if previous is not None:
            self._retire(key, previous)
        return True

    def _retire(self, key: Key, version: ModelVersion) -> None:
        """Drain `version` (no new requests reach it), then unload it, in the background."""
        task = asyncio.get_running_loop().create_task(self._drain_and_close(key, version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_close(self, key: Key, version: ModelVersion) -> None:
        await wait_drained([version], self.settings.drain_timeout_s)
        await asyncio.to_thread(version.batcher.close)
        logger.info("model version unloaded", extra={"model": key[0], "version": key[1]})

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except OSError as exc:  # the repository directory itself vanished or is unreadable
                logger.error("repository scan failed", extra={"path": str(self.root), "error": str(exc)})

    # ---- shutdown ----------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting requests and wait for queued and running ones; False on timeout."""
        self.accepting = False
        return await wait_drained(self.all_versions(), timeout_s)

    def abort(self) -> None:
        """Stop accepting and fail every queued request with 503 now (running batches still finish)."""
        self.accepting = False
        for version in self.all_versions():
            version.batcher.stop()

    async def close(self) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for version in self.all_versions():
            await asyncio.to_thread(version.batcher.close)
        self._ready.clear()


async def wait_drained(versions: list[ModelVersion], timeout_s: float, poll_s: float = 0.005) -> bool:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while any(v.batcher.pending for v in versions):
        if loop.time() > give_up:
            return False
        await asyncio.sleep(poll_s)
    return True


class RepositoryMissing(RuntimeError):
    """There is nothing to serve: the repository does not exist, or the embedded default model is absent."""


def require_repository(settings: ServerSettings) -> Path:
    root = settings.repository_path
    if settings.model_repository is None and not (root.is_dir() and scan_repository(root)):
        raise RepositoryMissing(
            f"no --model-repository (MFQL_MODEL_REPOSITORY) given and the embedded default model is missing: "
            f"expected a bundle directory at {root}/<model-name>/<version>/ (docs/bundle-format.md)"
        )
    if not root.is_dir():
        raise RepositoryMissing(f"model repository {root} is not a directory")
    return root
