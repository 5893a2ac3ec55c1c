"""Searching CLI output that rich wrapped in an error box."""

from __future__ import annotations


def flatten(text: str) -> str:
    """Output with rich's box drawing removed and whitespace collapsed, so wrapped messages can be searched (where
    a line breaks depends on the length of the paths in the message)."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
