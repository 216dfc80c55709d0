"""Errors a user can fix. Jobs print them as one line and exit with code 2."""


class CvrayError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""


class DataError(CvrayError):
    """Missing, corrupt or malformed input data."""


class ConfigError(CvrayError):
    """Wrong or inconsistent arguments."""


class ClusterError(CvrayError):
    """The Ray cluster cannot be reached or lacks what the job asks for."""


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line (its type name if it has no text): for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
