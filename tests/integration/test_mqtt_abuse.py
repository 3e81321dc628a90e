"""MQTT abuse (issue #9), beyond tests/integration/test_broker_security.py (anonymous login,
foreign topics with reason code 135, `#` and `$SYS/#`, foreign client ids, disabled
devices) and test_provisioning.py (a revoked device is disconnected within 5 s):

- wildcards in client ids and usernames;
- a device trying to read other devices' traffic, ingest's shared stream or the control API;
- garbage mixed into valid traffic: every bad message is quarantined and ingest keeps going;
  the short version of the garbage-share measurement whose long version (`make chaos`) judges
  the issue's "10 % garbage slows valid ingest by at most 10 %".
"""

from __future__ import annotations

import pytest

from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from services.infra.local import LocalServices
from tests.integration.chaos import SHORT, measure_garbage_share
from tests.integration.test_broker_security import Probe, device_identity

__all__ = ["device_identity"]  # the fixture, shared with test_broker_security.py

NOT_AUTHORISED = 135


@pytest.mark.parametrize("wildcard", ["+", "#", "/", "+/#"])
def test_wildcards_in_client_id_or_username_are_refused(
    settings: Settings, device_identity: tuple[str, str], wildcard: str
) -> None:
    serial, password = device_identity
    for client_id, user in (
        (f"{serial}{wildcard}", serial),  # own username, client id with a wildcard
        (f"{serial}{wildcard}", f"{serial}{wildcard}"),  # both
        (serial, f"{serial}{wildcard}"),  # own client id, username with a wildcard
        (wildcard, wildcard),
    ):
        probe = Probe(settings, client_id, user, password)
        try:
            assert probe.connack is not None and probe.connack.is_failure, (client_id, user)
        finally:
            probe.close()


def test_device_cannot_subscribe_to_other_traffic_or_the_control_api(
    settings: Settings, device_identity: tuple[str, str]
) -> None:
    serial, password = device_identity
    probe = Probe(settings, serial, serial, password)
    try:
        for topic in (
            "fieldtrack/v1/+/usage",  # every device's usage
            "fieldtrack/#",
            "$share/steal/fieldtrack/v1/+/+",  # a share of ingest's stream
            "$share/fieldtrack/fieldtrack/v1/+/+",  # ingest's own default group
            "$SYS/broker/clients/#",
            "$CONTROL/dynamic-security/v1/#",
            "$CONTROL/dynamic-security/v1/response",
            f"fieldtrack/v1/{serial}/#",  # devices publish; they never read, even their own
        ):
            assert probe.subscribe(topic)[0] >= 0x80, topic
        assert probe.publish("$CONTROL/dynamic-security/v1") == NOT_AUTHORISED
    finally:
        probe.close()


# --- garbage mixed into valid traffic ---------------------------------------------------------


def test_ten_percent_garbage_is_all_quarantined_and_valid_ingest_keeps_pace(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """The short version of `make chaos`'s garbage-share measurement: 4 clean and 4 mixed
    drains of 10,000 queued valid messages (tests/integration/chaos.py)."""
    result = measure_garbage_share(local_services, settings, broker_admin, SHORT)
    print("\n" + result.line())
    assert result.complete, "some garbage was neither stored nor quarantined"
    # Issue #9's >= 0.9 is judged by `make chaos` (12 drains of 20,000 valid messages): speed
    # is measured there, not asserted tightly in a timed test on a shared machine. Short runs
    # have measured 0.76-0.93; at 0.9, garbage costs about 0.9x a valid message, and 0.7 fails
    # once it costs about 4x (ratio = 1 / (1 + garbage share x relative cost)).
    assert result.ratio >= 0.7, f"garbage slowed valid ingest by {1 - result.ratio:.0%}"
