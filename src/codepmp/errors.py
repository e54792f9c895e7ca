"""Errors a user can act on. The CLI and every pipeline stage print them as one line and exit non-zero."""


class CodepmpError(Exception):
    """Base class: the message names the input and what is wrong with it."""


class ConfigError(CodepmpError):
    """A config key, value or profile that does not exist or has the wrong type."""


class InputError(CodepmpError):
    """An input path, dataset or model that is missing or unusable."""


class ServiceError(CodepmpError):
    """The object store or MLflow server cannot be reached or refused a request."""
