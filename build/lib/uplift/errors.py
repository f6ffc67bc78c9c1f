"""One base class for every error meant for the user.

Each one already says what went wrong and what to do, so the commands (``uplift``, ``uplift-upscale``,
``uplift-features``, the table drivers) print its message as one line, ``<prog>: error: ...``, instead of a
traceback (``UPLIFT_TRACEBACK=1`` shows the traceback). The subclasses also derive from the built-in type a
caller would expect (``ValueError`` for bad input, ``RuntimeError`` for what the environment lacks), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["UPLiFTError", "InputError", "ConfigError", "WeightsError", "WeightsUnavailableError",
           "CheckpointMismatchError", "UpsamplerUnavailableError"]


class UPLiFTError(Exception):
    """Base class: an error whose message is complete for the user (problem and fix)."""


class InputError(UPLiFTError, ValueError):
    """An image, a feature map or an argument the model cannot use."""


class ConfigError(UPLiFTError, ValueError):
    """A bad option, a missing dataset or a configuration that cannot work."""


class WeightsError(UPLiFTError, ValueError):
    """A weights file that cannot be read or identified."""


class CheckpointMismatchError(WeightsError):
    """The checkpoint's tensors do not fit the model built from the config."""


class WeightsUnavailableError(UPLiFTError, RuntimeError):
    """Weights could not be downloaded (no network, no such repository, gated access, ...)."""


class UpsamplerUnavailableError(UPLiFTError, RuntimeError):
    """A peer upsampler's code or weights could not be loaded (offline, not installed, ...)."""
