"""Exception types that the command line maps to exit codes.

`InputError` and its subclasses mean the user's input is wrong (a file, key, option or
value): the command line prints the one-line message and exits with code 2, without a
traceback. Any other exception is a bug or an environment failure.
"""


class Fly64Error(Exception):
    """Base class of every error that fly64 raises on purpose."""


class InputError(Fly64Error, ValueError):
    """Invalid user input. The message names the file, key or option and the expected value."""


class DataContractError(InputError):
    """An NPZ file that breaks the data contract (missing key, wrong dtype, bad values)."""


class BundleError(InputError):
    """A model bundle that is rejected: damaged, mismatched or carrying unsafe content."""


class JobFailedError(Fly64Error):
    """A training or reconstruction job that ran and failed (non-finite loss, crash)."""
