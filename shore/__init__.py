"""The shore station: MQTT ingest of a fleet's counts into SQLite or PostgreSQL, and a live web dashboard.

Torch-free; it imports only `edge_agent`'s contracts (topics, payload schemas), never its runtime.
"""

__all__ = ["__version__"]

__version__ = "0.2.0"
