"""Who may do what: roles, permissions, and the caller of a request."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Role(StrEnum):
    ADMIN = "admin"  # everything, including users and tokens
    PM = "pm"  # reads every customer; writes deliveries and decisions
    OPS = "ops"  # fleet and ingest health; provisions and revokes devices
    VIEWER = "viewer"  # read-only, one customer's projects


class Audience(StrEnum):
    """Who analytics are for: a customer's own staff see usage; the solution company's staff
    also see business value and verdicts."""

    CUSTOMER = "customer"
    INTERNAL = "internal"


class Permission(StrEnum):
    READ_REGISTRY = "registry:read"  # customers, projects, features, deliveries
    WRITE_REGISTRY = "registry:write"  # customers, projects, features, registry CSV imports
    WRITE_DELIVERIES = "deliveries:write"
    READ_USAGE = "usage:read"  # usage, analytics and their exports, per project
    READ_PORTFOLIO = "portfolio:read"  # analytics across customers
    READ_DECISIONS = "decisions:read"
    WRITE_DECISIONS = "decisions:write"
    READ_FLEET = "fleet:read"  # devices and their state
    MANAGE_DEVICES = "devices:write"  # provision, revoke, rotate, delete, import history
    READ_INGEST = "ingest:read"  # quarantine and ingest health
    MANAGE_ACCOUNTS = "accounts:write"  # users and service tokens
    READ_ALERTS = "alerts:read"  # the alerts of the kinds a role sees (services/alerts/store.py)
    ACK_ALERTS = "alerts:acknowledge"
    MANAGE_ALERTS = "alerts:write"  # rules, channels, dead notifications


P = Permission
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.PM: frozenset(
        {
            P.READ_REGISTRY,
            P.WRITE_DELIVERIES,
            P.READ_USAGE,
            P.READ_PORTFOLIO,
            P.READ_DECISIONS,
            P.WRITE_DECISIONS,
            P.READ_FLEET,
            P.READ_ALERTS,
            P.ACK_ALERTS,
        }
    ),
    Role.OPS: frozenset(
        {
            P.READ_REGISTRY,
            P.READ_FLEET,
            P.MANAGE_DEVICES,
            P.READ_INGEST,
            P.READ_ALERTS,
            P.ACK_ALERTS,
            P.MANAGE_ALERTS,
        }
    ),
    Role.VIEWER: frozenset({P.READ_REGISTRY, P.READ_USAGE, P.READ_FLEET, P.READ_ALERTS}),
}


@dataclass(frozen=True)
class Principal:
    """The caller of one request, from a token or a dashboard session."""

    kind: Literal["user", "token"]
    id: int
    name: str
    role: Role
    customer_id: int | None  # set for customer viewers only
    user_id: int | None = None  # the person behind it (None for a service token)
    # the session's anti-CSRF token, when the caller came with a session cookie
    csrf_token: str | None = None
    # the user's credential generation this caller was issued under (None for a service token)
    epoch: int | None = None

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def customer_scope(self) -> int | None:
        """The one customer this caller may see, or None for every customer."""
        return self.customer_id if self.role is Role.VIEWER else None
