"""One base class for every error meant for the user.

Each one already says what went wrong and what to do, so the commands (``uplift``, ``uplift-upscale``,
``uplift-features``, the table drivers) print its message as one line, ``<prog>: error: ...``, instead of a
traceback (``UPLIFT_TRACEBACK=1`` shows the traceback). The subclasses also derive from the built-in type a
caller would expect (``ValueError`` for bad input, ``RuntimeError`` for what the environment lacks), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

__all__ = ["UPLiFTError", "InputError", "ConfigError", "WeightsError", "WeightsUnavailableError",
           "CheckpointMismatchError", "UpsamplerUnavailableError", "report_user_error", "user_error"]


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


def user_error(err: BaseException) -> Optional[BaseException]:
    """The error meant for the user (bad input, missing data or weights) in ``err``'s chain, or None.

    Libraries wrap the errors raised inside them (jsonargparse: "does not validate against any of the Union
    subtypes"); the user needs only the original. Our own errors (which already say what to do) win over the
    ``ValueError``/``FileNotFoundError`` they wrap or are wrapped in.
    """
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UPLiFTError):
            return err
        if isinstance(err, (ValueError, FileNotFoundError)):
            found = err
        err = err.__cause__ or err.__context__
    return found


def report_user_error(prog: str, err: BaseException, hint: str = "") -> bool:
    """Print ``<prog>: error: <message>`` (and ``hint`` on the next line) for an error meant for the user and
    return True; return False (the caller re-raises) for anything else, or when ``UPLIFT_TRACEBACK=1``."""
    user = user_error(err)
    if user is None or os.environ.get("UPLIFT_TRACEBACK"):
        return False
    print(f"{prog}: error: {user}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
    return True
