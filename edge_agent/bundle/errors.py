"""Why a bundle was refused: one exception class per kind of problem, all under `BundleError`.

Callers that only care whether a bundle is usable catch `BundleError`; the model-update path maps the subclasses
to distinct `model/result` errors (a bad signature is an attack, a hash mismatch may be a broken download).
"""

from __future__ import annotations


class BundleError(Exception):
    """A model bundle cannot be written, read or trusted."""


class SignatureError(BundleError):
    """`manifest.sig` is missing, malformed, or verifies with none of the trusted keys."""


class HashMismatchError(BundleError):
    """A file the manifest names is missing, or its size or sha256 differs from the manifest."""


class ManifestError(BundleError):
    """`manifest.json` is not valid JSON or does not satisfy the manifest schema (missing or unknown field...)."""


class UnsupportedSchemaError(ManifestError):
    """The manifest declares a `schema_version` newer than this runtime understands."""


class VersionError(BundleError):
    """The bundle's version is not newer than the running one (and no explicit rollback was asked)."""


class TooLargeError(BundleError):
    """A file inside the bundle holds more bytes than allowed (the manifest's size, or a fixed cap)."""


class GoldenError(BundleError):
    """`golden.json` is not valid, or does not agree with the manifest that names it."""
