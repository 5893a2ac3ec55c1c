"""The web dashboard and JSON API (FastAPI app factory + one router per concern)."""

from shore.web.app import create_app

__all__ = ["create_app"]
