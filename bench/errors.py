"""Errors the command line turns into one clear message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: an unknown name, an impossible combination, a bad number.

    Raised before anything is written, so the CLI can print it and exit 2 with no traceback.
    """
