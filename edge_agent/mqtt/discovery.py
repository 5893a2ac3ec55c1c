"""Home Assistant MQTT discovery: config messages that make the counts appear as sensors with no manual setup.

See https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery. Each config is retained so Home Assistant finds
it after its own restart; the agent re-sends them anyway when Home Assistant announces `online` on its status topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from edge_agent.mqtt.topics import Topics, ha_id

# Status topics hold more words than Home Assistant's available / not available: the device's online / stopped /
# offline (the Last Will), a camera's online / offline / disabled. Home Assistant ignores a payload that matches
# neither `payload_available` nor `payload_not_available` (the entity keeps its old availability), so every word but
# `online` is mapped to `offline` explicitly: a `stopped` device or a `disabled` camera shows unavailable.
_ONLINE_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"

# `state_class` per value. `total_increasing` would tell Home Assistant that any decrease is a meter reset and have
# its statistics add the next rise to a running sum; none of our values qualifies: the per-frame count goes up and
# down, and the unique count restarts at 0 on every agent start and camera reset. So every numeric sensor is a
# `measurement` (mean / min / max statistics, a drop is just a drop).
STATE_CLASSES: dict[str, str] = {"count": "measurement", "unique_count": "measurement", "outbox_depth": "measurement"}


def _device_block(topics: Topics, software_version: str) -> dict[str, object]:
    return {
        "identifiers": [f"starfish_{topics.device_id}"],
        "name": f"Starfish counter {topics.device_id}",
        "manufacturer": "starfish-edge",
        "model": "edge agent",
        "sw_version": software_version,
    }


def _availability(topic: str) -> dict[str, str]:
    return {"topic": topic, "value_template": _ONLINE_TEMPLATE}


def discovery_messages(topics: Topics, cameras: Iterable[str], software_version: str) -> Iterator[tuple[str, bytes]]:
    """Yield (config topic, JSON payload) for every entity of the device and its cameras.

    `unique_id`s (`starfish_{device}_{camera}_count`, ...) are part of the contract: Home Assistant keys its entity
    registry on them, so a changed id leaves the old entity orphaned and the new one appears as `..._2`.
    """
    device = _device_block(topics, software_version)
    # The device's `status` is its Last Will topic: the broker sets it to `offline` when the agent dies.
    dev_avail = _availability(topics.status)
    uid = f"starfish_{topics.device_id}"

    def config(component: str, object_id: str, body: dict[str, object]) -> tuple[str, bytes]:
        body = {"unique_id": f"{uid}_{object_id}", "object_id": ha_id(f"{uid}_{object_id}"), "device": device, **body}
        return topics.ha_config(component, object_id), json.dumps(body, separators=(",", ":")).encode()

    for cam in sorted(set(cameras)):
        # A camera's retained `online` outlives a killed agent (one Will per connection): both must say online.
        cam_avail = [dev_avail, _availability(topics.camera_status(cam))]
        yield config(
            "sensor",
            f"{cam}_count",
            {
                "name": f"{cam} starfish in view",
                "state_topic": topics.count_value(cam),
                "state_class": STATE_CLASSES["count"],
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
                # The retained live value, not `…/counts`: replayed `historical` copies there would move the
                # sensor back in time after every outage.
                "state_topic": topics.unique_value(cam),
                "state_class": STATE_CLASSES["unique_count"],
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
            "state_class": STATE_CLASSES["outbox_depth"],
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
