"""fieldtrack's own exceptions; lower-level errors are translated at the boundary."""


class FieldtrackError(Exception):
    """Base of every error fieldtrack raises on purpose."""


class ConfigError(FieldtrackError):
    """Settings are missing or invalid."""


class InfraError(FieldtrackError):
    """A local service could not be installed, built or started."""


class BrokerAdminError(FieldtrackError):
    """The broker refused or did not answer a dynamic-security command."""


class DisconnectError(BrokerAdminError):
    """The registry change is committed, but the broker could not be made to close the
    device's connections (it is refused at its next login; repeating the request retries)."""


class NotFoundError(FieldtrackError):
    """A requested object does not exist (or is not visible to the caller)."""


class ConflictError(FieldtrackError):
    """The request clashes with what exists: a duplicate, or data that still depends on it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidInputError(FieldtrackError):
    """Input that passed its schema but does not fit the data (e.g. an unknown reference)."""

    def __init__(self, message: str, field: str | None = None, location: str = "body") -> None:
        super().__init__(message)
        self.field = field
        self.location = location


class AuthenticationError(FieldtrackError):
    """No credentials, or credentials that are wrong, expired or revoked."""


class PermissionDeniedError(FieldtrackError):
    """The caller is known but their role does not allow this."""


class RateLimitedError(FieldtrackError):
    """Too many attempts; the caller should wait `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
