"""An ``s3://bucket/prefix`` bundle store for `starfish release` (cloud side only; devices never need boto3).

`export.release` builds and verifies the bundle ``.tar`` locally as for a directory store, then `S3Store.put`
uploads it with boto3's managed transfer (`upload_file`: multipart above boto3's threshold, parts retried by boto3)
with ``Content-Type: application/x-tar`` and the tar's sha256 as object metadata (``x-amz-meta-sha256``), and checks
what landed (HeadObject: size and that metadata) before anything is announced — a concurrent writer of the same key
is caught here, not on the devices.

Devices fetch over plain http(s) (`edge_agent.update.download`), so the announced URL is either ``url_base`` + the
object key (a public bucket, or a CDN in front of it) or a presigned GET URL (`S3Store.presign`). A SigV4
presigned URL lasts at most `MAX_PRESIGN_S` (7 days), and one made with temporary credentials (an STS session, an
instance role) stops working when they expire, whatever it says.

Endpoint, region and credentials come from boto3's default chain (``AWS_*`` environment variables,
``~/.aws/config`` and ``credentials``, an instance or container role); ``endpoint_url`` points at an S3-compatible
store (MinIO, Ceph RGW, Cloudflare R2). boto3 is the optional ``[s3]`` extra, imported when an s3 store is used;
every failure a user can cause (boto3 missing, no credentials, a refused key, a missing bucket, an unreachable
endpoint) is a `StoreError` with a one-line message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEME = "s3://"
# SigV4 query signing: X-Amz-Expires may not exceed one week.
MAX_PRESIGN_S = 7 * 24 * 3600
CONTENT_TYPE = "application/x-tar"
SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256

_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403"}
)


class StoreError(ValueError):
    """The s3 store cannot be used or refused the bundle (a one-line, user-facing reason)."""


def is_s3_url(store: str | Path) -> bool:
    return isinstance(store, str) and store.startswith(SCHEME)


@dataclass
class S3Store:
    """``s3://bucket/prefix``: objects ``<prefix>/<name>-<version>.tar``. Build with `S3Store.from_url`."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    _client: Any = field(default=None, init=False, repr=False)
    _session: Any = field(default=None, init=False, repr=False)

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> S3Store:
        if not is_s3_url(url):
            raise StoreError(f"an s3 store is s3://bucket[/prefix], got {url!r}")
        bucket, _, prefix = url[len(SCHEME) :].partition("/")
        if not bucket:
            raise StoreError(f"the s3 store {url!r} names no bucket")
        if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
            raise StoreError(f"--s3-endpoint-url must be http(s)://host[:port], got {endpoint_url!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"), endpoint_url=endpoint_url)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use, from boto3's default configuration chain)."""
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise StoreError(
                    "an s3:// store needs boto3, which is not installed: pip install 'starfish-edge[s3]'"
                ) from exc
            from botocore.exceptions import BotoCoreError

            # SigV4 always (presigned URLs included); boto3's standard retry mode for throttling and 5xx.
            config = Config(signature_version="s3v4", retries={"mode": "standard"})
            try:
                self._session = boto3.session.Session()
                self._client = self._session.client("s3", endpoint_url=self.endpoint_url, config=config)
            except BotoCoreError as exc:  # an AWS_PROFILE that does not exist, a malformed config file...
                raise StoreError(f"cannot set up the S3 client for {self}: {exc}") from exc
        return self._client

    def put(self, tar: Path, key: str, *, sha256: str, size: int) -> None:
        """Upload ``tar`` to ``key`` and check that the object now there is it (size and sha256 metadata)."""
        client = self.client
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client.upload_file(
                str(tar),
                self.bucket,
                key,
                ExtraArgs={"ContentType": CONTENT_TYPE, "Metadata": {SHA256_METADATA: sha256}},
            )
        except S3UploadFailedError as exc:
            # boto3 wraps the ClientError of a failed transfer (its context); that one says why.
            cause = exc.__cause__ or exc.__context__
            raise self._error("upload to", key, cause if isinstance(cause, ClientError) else exc) from exc
        except (BotoCoreError, ClientError) as exc:
            raise self._error("upload to", key, exc) from exc
        try:
            head = client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("check (HeadObject) of", key, exc) from exc
        landed_size = int(head.get("ContentLength", -1))
        landed_sha = head.get("Metadata", {}).get(SHA256_METADATA)
        if landed_size != size or landed_sha != sha256:
            raise StoreError(
                f"what landed at {self.uri(key)} is not this bundle ({landed_size} bytes, sha256 metadata "
                f"{landed_sha!r}; uploaded {size} bytes, {sha256}): another writer of that key? nothing announced"
            )
        logger.info("uploaded %s to %s (%d bytes, checked by HeadObject)", tar.name, self.uri(key), size)

    def tar_names(self) -> dict[str, str]:
        """``{file name: key}`` of the ``.tar`` objects directly under the prefix (ListObjectsV2: s3:ListBucket)."""
        client = self.client
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, str] = {}
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(prefix) :]
                    if name.endswith(".tar"):
                        found[name] = str(item["Key"])
        except (BotoCoreError, ClientError) as exc:
            raise self._error("listing of", prefix, exc) from exc
        return found

    def fetch(self, key: str, dest: Path) -> Path:
        """Download ``key`` to ``dest`` (boto3's managed transfer); the caller verifies what it got."""
        client = self.client
        from botocore.exceptions import BotoCoreError, ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(self.bucket, key, str(dest))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("download of", key, exc) from exc
        return dest

    def presign(self, key: str, expires_s: int) -> str:
        """A presigned GET URL for ``key``, valid ``expires_s`` seconds (at most `MAX_PRESIGN_S`)."""
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise StoreError(f"--presign must be 1..{MAX_PRESIGN_S} seconds (SigV4's 7-day cap), got {expires_s}")
        client = self.client
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            url = str(
                client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
                )
            )
            credentials = self._session.get_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise self._error("presigning of", key, exc) from exc
        if credentials is not None and credentials.token:
            logger.warning(
                "the presigned URL was signed with temporary credentials: it stops working when they expire, "
                "which may be before %d s",
                expires_s,
            )
        return url

    def _error(self, what: str, key: str, exc: BaseException) -> StoreError:
        """The one-line `StoreError` for a botocore (or boto3 transfer) error."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = self.uri(key) + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"{what} {where}: no AWS credentials found (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, ~/.aws/credentials or an instance role)"
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            if code in ("NoSuchKey", "404"):
                return StoreError(f"{what} {where}: no such object")
            if code == "NoSuchBucket":
                return StoreError(f"{what} {where}: the bucket {self.bucket!r} does not exist")
            if code in _DENIED:
                return StoreError(f"{what} {where}: the store refused the credentials or the permission ({code})")
            return StoreError(f"{what} {where} failed: {code}: {error.get('Message', exc)}")
        return StoreError(f"{what} {where} failed: {exc}")
