"""Typed errors. The CLI alone turns these into one-line messages and exit codes."""

from __future__ import annotations


class LabelkitError(Exception):
    """Base of every error labelkit raises on purpose."""

    exit_code = 1


class BadInputError(LabelkitError, ValueError):
    """The user's data or arguments are wrong; the message says how to fix them."""


class MissingArtifactError(LabelkitError, FileNotFoundError):
    """An artifact a stage needs is not in the workspace."""


class DamagedArtifactError(BadInputError):
    """An artifact or cache in the workspace cannot be read (truncated, corrupt, wrong shape); the message says what rebuilds it."""


class WorkspaceBusyError(LabelkitError):
    """Another labelkit run holds the workspace lock and ``--no-wait`` was given."""


class ConfigError(LabelkitError, ValueError):
    """A configuration file or option has an unknown or invalid key."""


class DependencyError(LabelkitError, ImportError):
    """An optional dependency (or model weights) is not available here."""


class ThresholdExceededError(LabelkitError):
    """A CI gate (e.g. ``detect-noise --fail-above``) was breached."""

    exit_code = 3


class LabelkitWarning(UserWarning):
    """Something the user should know about, but not fatal."""
