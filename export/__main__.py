"""`python -m export …` is `starfish export …`."""

from export.cli import app

app()
