"""Every MQTT topic the agent uses, built in one place (see docs/mqtt.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A topic level must not contain separators or wildcards; we also keep ids printable and short so that topics,
# client ids and Home Assistant object ids derived from them stay valid.
_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_level(kind: str, value: str) -> str:
    """Return `value` if it can be one topic level; raise ValueError naming `kind` otherwise."""
    if not isinstance(value, str) or not _LEVEL_RE.fullmatch(value):
        raise ValueError(f"{kind} {value!r} is not usable in MQTT topics: use 1-64 characters from A-Z a-z 0-9 _ . -")
    return value


def check_topic_root(kind: str, value: str) -> str:
    """A prefix of one or more topic levels: no wildcards, no NUL, no leading/trailing `/`, no empty level."""
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "+#\0")
        or value.startswith("/")
        or value.endswith("/")
        or "//" in value
        or len(value.encode()) > 1024
    ):
        raise ValueError(
            f"{kind} {value!r} must be topic levels separated by '/', without '+', '#', a leading or trailing '/' "
            "or an empty level"
        )
    return value


# Device-level leaves; a camera with one of these ids would collide with them (`…/model/set` vs camera `model`).
RESERVED_CAMERA_IDS = frozenset({"status", "stats", "model"})


def check_camera_id(camera_id: str) -> str:
    check_level("camera_id", camera_id)
    if camera_id in RESERVED_CAMERA_IDS:
        raise ValueError(f"camera_id {camera_id!r} is reserved (device-level topic); choose another id")
    return camera_id


@dataclass(frozen=True)
class Topics:
    """Topic builder for one device. `prefix` may hold several levels (e.g. `site1/starfish`)."""

    prefix: str
    device_id: str
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        check_level("device_id", self.device_id)
        check_topic_root("topic_prefix", self.prefix)
        check_topic_root("discovery.prefix", self.discovery_prefix)

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def stats(self) -> str:
        return f"{self.root}/stats"

    @property
    def model(self) -> str:
        return f"{self.root}/model"

    @property
    def model_set(self) -> str:
        return f"{self.root}/model/set"

    @property
    def model_result(self) -> str:
        return f"{self.root}/model/result"

    @property
    def model_update(self) -> str:
        return f"{self.root}/model/update"

    def camera_status(self, camera_id: str) -> str:
        return f"{self.root}/{check_camera_id(camera_id)}/status"

    def counts(self, camera_id: str) -> str:
        return f"{self.root}/{check_camera_id(camera_id)}/counts"

    def count_value(self, camera_id: str) -> str:
        return f"{self.root}/{check_camera_id(camera_id)}/count"

    def unique_value(self, camera_id: str) -> str:
        """Retained latest unique count, published from the live path only (never from an outbox replay)."""
        return f"{self.root}/{check_camera_id(camera_id)}/unique"

    def tracks(self, camera_id: str) -> str:
        return f"{self.root}/{check_camera_id(camera_id)}/tracks"

    def camera_reset(self, camera_id: str) -> str:
        return f"{self.root}/{check_camera_id(camera_id)}/reset"

    @property
    def reset_filter(self) -> str:
        """Subscription filter for every camera's reset topic."""
        return f"{self.root}/+/reset"

    def fleet_model(self, fleet: str) -> str:
        return f"{self.prefix}/fleet/{check_level('fleet', fleet)}/model"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def ha_config(self, component: str, object_id: str) -> str:
        # Home Assistant: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids from [a-zA-Z0-9_-]
        return f"{self.discovery_prefix}/{component}/{ha_id('starfish_' + self.device_id)}/{ha_id(object_id)}/config"

    def camera_of(self, topic: str) -> str | None:
        """The camera id in a per-camera topic of this device (`…/{camera_id}/<leaf>`), else None."""
        head = self.root + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        return parts[0] if len(parts) == 2 else None


def ha_id(value: str) -> str:
    """An id as Home Assistant discovery accepts it (`[a-zA-Z0-9_-]`): the `.` our ids allow becomes `_`."""
    return value.replace(".", "_")
