"""The bundle on disk (docs/bundle-format.md): file names, SHA256SUMS, metadata, atomic writes.

Torch-free: `mfql-export inspect` and anything else that only reads bundles import this
module without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporters.errors import BundleError, ExportError

FORMAT_VERSION = 1
ONNX_FILE = "policy.onnx"
TORCHSCRIPT_FILE = "policy.ts"
METADATA_FILE = "metadata.json"
CHECKSUMS_FILE = "SHA256SUMS"
SELFTEST_FILE = "selftest.npz"
INPUT_NAMES = ("observation", "noise")
OUTPUT_NAMES = ("action", "q_value", "candidates")
# Model names are directory names in a model repository and Triton model names.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
REQUIRED_METADATA_KEYS = (
    "format_version",
    "name",
    "obs_dim",
    "action_dim",
    "action_low",
    "action_high",
    "default_num_candidates",
    "max_num_candidates",
    "inputs",
    "outputs",
    "files",
)


def chunk_shape(metadata: dict) -> tuple[int, ...]:
    """One answer's action, and one candidate's noise: (action_dim,), or (H, action_dim) for a
    chunked policy. Bundles written before action chunks have no `action_horizon`: H = 1."""
    horizon, action_dim = int(metadata.get("action_horizon", 1)), int(metadata["action_dim"])
    return (action_dim,) if horizon == 1 else (horizon, action_dim)


def file_sha256(path: Path) -> str:
    # training.checkpoint.file_sha256 does the same, but importing it would import torch.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(bundle_dir: Path) -> Path:
    """SHA256SUMS over every other file, in the `<digest>  <name>` form `sha256sum -c` reads."""
    names = sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    lines = [f"{file_sha256(bundle_dir / name)}  {name}\n" for name in names]
    path = bundle_dir / CHECKSUMS_FILE
    path.write_text("".join(lines))
    return path


def _parse_checksum_line(path: Path, number: int, line: str) -> tuple[str, str]:
    digest, separator, name = line.partition("  ")
    is_hex = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    if not separator or not is_hex or not name or "/" in name:
        raise BundleError(
            f"{path}:{number}: expected '<64 lowercase hex digits>  <file name>', received {line!r}"
        )
    return name, digest


def read_checksums(bundle_dir: Path) -> dict[str, str]:
    path = bundle_dir / CHECKSUMS_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: missing {CHECKSUMS_FILE}")
    lines = path.read_text().splitlines()
    return dict(_parse_checksum_line(path, n, line) for n, line in enumerate(lines, 1) if line)


def verify_checksums(bundle_dir: Path) -> list[str]:
    """The verified file names; BundleError on a missing, altered or unlisted file."""
    expected = read_checksums(bundle_dir)
    for name, digest in expected.items():
        if not (bundle_dir / name).is_file():
            raise BundleError(f"{bundle_dir}: {name} is listed in {CHECKSUMS_FILE} but missing")
        actual = file_sha256(bundle_dir / name)
        if actual != digest:
            raise BundleError(f"{bundle_dir / name}: SHA-256 {actual}, expected {digest} ({CHECKSUMS_FILE})")
    present = {p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE}
    unlisted = sorted(present - expected.keys())
    if unlisted:
        raise BundleError(f"{bundle_dir}: files not listed in {CHECKSUMS_FILE}: {', '.join(unlisted)}")
    return sorted(expected)


def read_metadata(bundle_dir: Path) -> dict:
    path = bundle_dir / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{bundle_dir}: missing {METADATA_FILE} (is this a bundle directory?)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    missing = [key for key in REQUIRED_METADATA_KEYS if key not in metadata]
    if missing:
        raise BundleError(f"{path}: missing required keys {missing}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {metadata['format_version']!r}, expected {FORMAT_VERSION}")
    horizon = metadata.get("action_horizon", 1)
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise BundleError(f"{path}: action_horizon must be an integer >= 1 (absent: 1), got {horizon!r}")
    return metadata


def write_metadata(bundle_dir: Path, metadata: dict) -> Path:
    path = bundle_dir / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it")


@contextmanager
def staged_directory(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty sibling directory of `target`; on success it becomes `target`, on error it vanishes.

    Writing next to the target keeps the final rename on one file system, so a reader sees
    either the old directory or the complete new one, never a half-written bundle.
    """
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which is private to the user) so the bundle gets the umask's mode.
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
        _replace_directory(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_directory(staging: Path, target: Path, overwrite: bool) -> None:
    refuse_existing(target, overwrite)  # something may have appeared at target meanwhile
    if not target.exists():
        os.replace(staging, target)
        return
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired, target)
        raise
    if retired.is_dir():
        shutil.rmtree(retired)
    else:
        retired.unlink()
