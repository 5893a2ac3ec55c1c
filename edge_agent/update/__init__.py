"""Over-the-air model updates (torch-free): signed announcements, bounded downloads, a persisted state machine.

* `announcement` — the signed announcement contract: `Announcement`, `sign_announcement`, `parse_announcement`,
  `verify_announcement` (each refusal its own error class in `errors`).
* `download` — http(s) with Range resume into a `.part`, capped at the signed size, stall timeout, bounded retries.
* `state` — `UpdateState` and `UpdateStore`: one SQLite row per update, every transition durable before it acts.
* `staging` — ``models_dir`` layout, unpack into ``versions/<v>``, atomic ``current`` link replacement.
* `check` — the staging check: loads, the signed golden frames of the loaded variant (schema 3), latency budget.
* `manager` — `UpdateManager`: offer / run / resume / commit / rollback.
* `worker` — `UpdateWorker`: the manager on its own thread (announcements queued, end-of-probation actions).
* `probation` — `Probation`: the new model's verdict from the agent's frames (errors, fps drop, frames/seconds).
* `runtime` — `AgentUpdates`: the glue inside the running agent (start-up, swap, probation, MQTT reports).
"""

from edge_agent.update.announcement import (
    Announcement,
    Rollout,
    SignedAnnouncement,
    canonical_json,
    parse_announcement,
    sign_announcement,
    verify_announcement,
)
from edge_agent.update.config import UpdateConfig
from edge_agent.update.state import UpdateRecord, UpdateState, UpdateStore

__all__ = [
    "Announcement",
    "Rollout",
    "SignedAnnouncement",
    "UpdateConfig",
    "UpdateRecord",
    "UpdateState",
    "UpdateStore",
    "canonical_json",
    "parse_announcement",
    "sign_announcement",
    "verify_announcement",
]
