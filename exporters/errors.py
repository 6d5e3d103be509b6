"""What can go wrong in `mfql-export`; the CLI turns each into one line on stderr and exit code 2.

Torch-free, so that reading and checking a bundle never imports torch.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export was refused or failed (bad option, existing target, parity failure); nothing was written."""


class BundleError(RuntimeError):
    """A bundle on disk is incomplete, tampered with or does not compute what it recorded."""
