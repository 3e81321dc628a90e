"""The naive reference: the consumer a team writes first, for comparison only.

A paho callback that parses each message and INSERTs its readings with a commit per message;
paho acknowledges a QoS 1 message after the callback returns, so it too acknowledges after
commit. It is given every advantage the obvious script would plausibly have (a device
cache, one open connection, a persistent session) and none of fieldtrack's (batching, COPY,
validation, quarantine, rollups, idempotence).

Run: `python -m bench.naive` with the FIELDTRACK_* connection variables and
NAIVE_CLIENT_ID set; prints "naive: subscribed" once it receives.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

INSERT = """
INSERT INTO usage_events (device_id, project_id, feature_key, device_time, received_at, seq,
                          item, count, duration_ms)
VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s)
"""


def main() -> None:
    env = os.environ
    conn = psycopg.connect(env["FIELDTRACK_DATABASE_URL"])
    devices = {
        serial: (device_id, project_id)
        for serial, device_id, project_id in conn.execute(
            "SELECT serial, id, project_id FROM devices"
        )
    }
    conn.commit()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        serial = msg.topic.split("/")[2]
        body = json.loads(msg.payload)
        device_id, project_id = devices[serial]
        for item, event in enumerate(body["events"]):
            conn.execute(
                INSERT,
                (
                    device_id,
                    project_id,
                    event["feature"],
                    event.get("ts", body["ts"]),
                    body["seq"],
                    item,
                    event.get("count", 1),
                    event.get("duration_ms"),
                ),
            )
        conn.commit()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe("fieldtrack/v1/+/usage", qos=1)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        print("naive: subscribed", flush=True)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=env["NAIVE_CLIENT_ID"],
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(
        env["FIELDTRACK_MQTT_INGEST_USERNAME"], env["FIELDTRACK_MQTT_INGEST_PASSWORD"]
    )
    client.on_connect, client.on_message, client.on_subscribe = on_connect, on_message, on_subscribe
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect(env["FIELDTRACK_MQTT_HOST"], int(env["FIELDTRACK_MQTT_PORT"]))
    client.loop_forever()
    conn.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
