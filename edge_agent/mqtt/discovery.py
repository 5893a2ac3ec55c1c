"""Home Assistant MQTT discovery: config messages that make the counts appear as sensors with no manual setup.

See https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery. Each config is retained so Home Assistant finds
it after its own restart; the agent re-sends them anyway when Home Assistant announces `online` on its status topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from edge_agent.mqtt.topics import Topics, ha_id

# The device `status` topic holds online / stopped / offline; Home Assistant only knows available / not available.
_ONLINE_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"


def _device_block(topics: Topics, software_version: str) -> dict[str, object]:
    return {
        "identifiers": [f"starfish_{topics.device_id}"],
        "name": f"Starfish counter {topics.device_id}",
        "manufacturer": "starfish-edge",
        "model": "edge agent",
        "sw_version": software_version,
    }


def _device_availability(topics: Topics) -> dict[str, str]:
    return {"topic": topics.status, "value_template": _ONLINE_TEMPLATE}


def discovery_messages(topics: Topics, cameras: Iterable[str], software_version: str) -> Iterator[tuple[str, bytes]]:
    """Yield (config topic, JSON payload) for every entity of the device and its cameras."""
    device = _device_block(topics, software_version)
    dev_avail = _device_availability(topics)
    uid = f"starfish_{topics.device_id}"

    def config(component: str, object_id: str, body: dict[str, object]) -> tuple[str, bytes]:
        body = {"unique_id": f"{uid}_{object_id}", "object_id": ha_id(f"{uid}_{object_id}"), "device": device, **body}
        return topics.ha_config(component, object_id), json.dumps(body, separators=(",", ":")).encode()

    for cam in sorted(set(cameras)):
        cam_avail = [
            dev_avail,
            {"topic": topics.camera_status(cam), "payload_available": "online", "payload_not_available": "offline"},
        ]
        yield config(
            "sensor",
            f"{cam}_count",
            {
                "name": f"{cam} starfish in view",
                "state_topic": topics.count_value(cam),
                "state_class": "measurement",
                "unit_of_measurement": "starfish",
                "availability": cam_avail,
                "availability_mode": "all",
            },
        )
        yield config(
            "sensor",
            f"{cam}_unique_count",
            {
                "name": f"{cam} unique starfish",
                "state_topic": topics.counts(cam),
                "value_template": "{{ value_json.unique_count }}",
                "state_class": "measurement",
                "unit_of_measurement": "starfish",
                "availability": cam_avail,
                "availability_mode": "all",
            },
        )
        yield config(
            "sensor",
            f"{cam}_status",
            {
                "name": f"{cam} camera status",
                "state_topic": topics.camera_status(cam),
                "entity_category": "diagnostic",
                "availability": [dev_avail],
            },
        )
    yield config(
        "sensor",
        "outbox_depth",
        {
            "name": "MQTT outbox depth",
            "state_topic": topics.stats,
            "value_template": "{{ value_json.outbox_depth }}",
            "state_class": "measurement",
            "unit_of_measurement": "messages",
            "entity_category": "diagnostic",
            "availability": [dev_avail],
        },
    )
    yield config(
        "sensor",
        "model",
        {
            "name": "Detector model",
            "state_topic": topics.model,
            "value_template": "{{ value_json.name }} v{{ value_json.version }} ({{ value_json.variant }})",
            "entity_category": "diagnostic",
            "availability": [dev_avail],
        },
    )
