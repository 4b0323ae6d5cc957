"""Typed errors. Every message says what was received and what was expected."""

from __future__ import annotations

__all__ = [
    "SamrtError",
    "CheckpointError",
    "ModelTypeMismatchError",
    "InputError",
    "ExportCheckError",
]


class SamrtError(Exception):
    """Base class of every error samrt raises on purpose."""


class CheckpointError(SamrtError):
    """A checkpoint file cannot be read or is not a SAM checkpoint."""


class ModelTypeMismatchError(CheckpointError):
    """The checkpoint's tensors describe another model type than the one asked for."""


class InputError(SamrtError, ValueError):
    """A prompt, image or tensor given by a caller is malformed."""


class ExportCheckError(SamrtError):
    """An exported graph disagrees with PyTorch by more than the stated tolerance."""
