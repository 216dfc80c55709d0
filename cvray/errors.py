"""Errors a user can fix. Jobs print them as one line and exit with code 2."""


class CvrayError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""


class DataError(CvrayError):
    """Missing, corrupt or malformed input data."""


class ConfigError(CvrayError):
    """Wrong or inconsistent arguments."""


class ClusterError(CvrayError):
    """The Ray cluster cannot be reached or lacks what the job asks for."""
