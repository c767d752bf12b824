"""The errors a user can cause, each carrying a one-line message that names the problem.

The CLI turns any `SpireError` into that line and exit status 2; library callers catch them like any ValueError.
"""


class SpireError(Exception):
    """Base class of every user-facing error in spire-rt."""


class ModelLoadError(SpireError):
    """A preset name or model folder that cannot be loaded (unknown, missing file, corrupt file)."""


class ImageError(SpireError):
    """An input image that cannot be read, or an output that cannot be written."""


class OptionError(SpireError, ValueError):
    """An option outside its allowed values."""
