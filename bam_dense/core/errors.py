"""Errors meant for people: one line that names the file, key, value or tensor at fault."""


class UserFacingError(Exception):
    """Bad input or environment; the CLI prints it as one line without a traceback."""
