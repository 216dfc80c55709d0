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


def root_cause_line(exc: BaseException) -> str:
    """The last non-empty line of the innermost cause: where a remote error (Ray's wrapped
    tracebacks) states what went wrong, e.g. "ValueError: bad shape"."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
