"""The one exception type for user mistakes.

The CLI prints a :class:`DermsynthError` as a single line on stderr and exits with code 2.
Anything else is a programming error and keeps its traceback.
"""

import pickle

from safetensors import SafetensorError


class DermsynthError(Exception):
    """A mistake the user can fix: a missing file, a bad config value, an unusable dataset."""


# What a truncated, hand-edited or half-written file that dermsynth wrote (weights, checkpoints, configs) raises
# when read back; callers turn it into a one-line error or a skip.
UNREADABLE_ARTIFACT_ERRORS = (SafetensorError, OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError,
                              pickle.UnpicklingError)
