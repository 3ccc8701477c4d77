"""The one exception type for user mistakes.

The CLI prints a :class:`DermsynthError` as a single line on stderr and exits with code 2.
Anything else is a programming error and keeps its traceback.
"""


class DermsynthError(Exception):
    """A mistake the user can fix: a missing file, a bad config value, an unusable dataset."""
