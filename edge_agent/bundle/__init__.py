"""Signed model bundles (torch-free): manifest schema, ed25519 signing, atomic writer, verifying loader.

Typical use on a device::

    from edge_agent.bundle import load_bundle
    bundle = load_bundle("models/demo/bundle", ["models/demo/demo_key.pub"])
    onnx_bytes = bundle.read_variant()         # default variant's bytes, checked again against the manifest
    spec = bundle.manifest.input                # shape, colour order, normalisation, resize rule
"""

from edge_agent.bundle.errors import (
    BundleError,
    GoldenError,
    HashMismatchError,
    ManifestError,
    SignatureError,
    TooLargeError,
    UnsupportedSchemaError,
    VersionError,
)
from edge_agent.bundle.files import sha256_bytes, sha256_file, unpack_tar
from edge_agent.bundle.golden import GoldenExpectations, GoldenFiles, parse_golden
from edge_agent.bundle.loader import VerifiedBundle, check_version, load_bundle, verify_bundle
from edge_agent.bundle.manifest import (
    GOLDEN_NAME,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    BundleFile,
    Counting,
    GoldenSet,
    InputSpec,
    Manifest,
    Normalisation,
    OutputSpec,
    TrainingInfo,
    Variant,
    parse_manifest,
)
from edge_agent.bundle.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_pem,
    verify_signature,
)
from edge_agent.bundle.writer import VariantSource, write_bundle

__all__ = [
    "GOLDEN_NAME",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "BundleError",
    "BundleFile",
    "Counting",
    "GoldenError",
    "GoldenExpectations",
    "GoldenFiles",
    "GoldenSet",
    "HashMismatchError",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "Normalisation",
    "OutputSpec",
    "SignatureError",
    "TooLargeError",
    "TrainingInfo",
    "UnsupportedSchemaError",
    "Variant",
    "VariantSource",
    "VerifiedBundle",
    "VersionError",
    "check_version",
    "generate_keypair",
    "key_id",
    "load_bundle",
    "load_private_key",
    "load_public_key",
    "parse_golden",
    "parse_manifest",
    "public_key_pem",
    "sha256_bytes",
    "sha256_file",
    "unpack_tar",
    "verify_bundle",
    "verify_signature",
    "write_bundle",
]
