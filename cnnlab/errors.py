"""Errors a user can act on. Their messages name the problem and the fix; the CLI prints them
as one line without a traceback."""


class CnnlabError(Exception):
    """Base class: bad input or a missing resource, with the fix in the message."""


class DataError(CnnlabError, ValueError):
    """A dataset, archive, array or image that cannot be used as it is."""


class ConfigError(CnnlabError, ValueError):
    """A model, training or search configuration that cannot work."""


class TrainingDiverged(CnnlabError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
