"""Device identities in the broker, whichever broker the configuration names.

Mosquitto keeps one dynamic-security client and role per device (services/core/broker_admin);
a NATS cluster keeps nothing per device (services/core/nats_admin). Provisioning talks to
either through this one interface, changing the broker inside the registry's transaction and
calling `committed` after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from services.core.broker_admin import BrokerAdmin
from services.core.nats_admin import NatsIdentities
from services.core.settings import Settings


class DeviceIdentities(Protocol):
    def create_devices(self, credentials: Sequence[tuple[str, str]]) -> None: ...
    def disable_device(self, serial: str) -> None: ...
    def set_device_password(self, serial: str, password: str) -> None: ...
    def delete_device(self, serial: str) -> None: ...
    def delete_devices(self, serials: Sequence[str]) -> None: ...
    def committed(self) -> None: ...


class IdentitySession(DeviceIdentities, AbstractContextManager["IdentitySession"], Protocol):
    """A DeviceIdentities used as a context manager (a broker connection while it lasts)."""


def open_identities(settings: Settings) -> IdentitySession:
    """The device identities of the configured broker, to be used in a `with` block."""
    if settings.broker == "nats":
        return NatsIdentities(settings)
    return BrokerAdmin(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_admin_username,
        settings.mqtt_admin_password.get_secret_value(),
    )
