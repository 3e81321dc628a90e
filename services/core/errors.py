"""fieldtrack's own exceptions; lower-level errors are translated at the boundary."""


class FieldtrackError(Exception):
    """Base of every error fieldtrack raises on purpose."""


class ConfigError(FieldtrackError):
    """Settings are missing or invalid."""


class InfraError(FieldtrackError):
    """A local service could not be installed, built or started."""


class BrokerAdminError(FieldtrackError):
    """The broker refused or did not answer a dynamic-security command."""


class NotFoundError(FieldtrackError):
    """A requested object does not exist (or is not visible to the caller)."""
