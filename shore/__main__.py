"""`python -m shore …` is `starfish shore …`."""

from shore.cli import app

if __name__ == "__main__":
    app()
