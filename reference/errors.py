"""Exceptions that the command line turns into one clear error line."""


class InputError(Exception):
    """Bad user input: a missing or malformed file, a bad number, an impossible request."""
