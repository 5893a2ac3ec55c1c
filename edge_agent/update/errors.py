"""Why an update was refused or failed: one class per kind, each with a stable ``code`` for `…/model/result`.

`final` says whether retrying the same announcement can help: a stalled server may come back (not final), a bad
signature or a 404 never will (final: reported once, no loop). `marks_bad` says whether the *bundle* itself is
proven unfit, so its version is remembered as bad on this device (`DeviceState.mark_bad`) — only for problems found
in bytes that were signed by a trusted key. A transfer problem (wrong sha256, oversize) is not the version's fault:
marking it bad would let whoever sits on the network block a good release.
"""

from __future__ import annotations


class UpdateError(Exception):
    """An update cannot proceed; ``code`` names the reason in reports."""

    code = "update_error"
    final = True
    marks_bad = False


class AnnouncementError(UpdateError):
    """The announcement is not one this device may act on."""

    code = "announcement_invalid"


class MalformedAnnouncement(AnnouncementError):
    """Not UTF-8 JSON of the envelope shape, duplicate keys, nested too deep, or the signed part fails the schema."""

    code = "announcement_malformed"


class UnsignedAnnouncement(AnnouncementError):
    """No signature at all: refused before anything in it is read."""

    code = "announcement_unsigned"


class BadAnnouncementSignature(AnnouncementError):
    """Signatures present, none verifies with a trusted release key."""

    code = "announcement_bad_signature"


class ExpiredAnnouncement(AnnouncementError):
    """`expires_at` has passed (freeze defence: stale metadata is not acted on)."""

    code = "announcement_expired"


class ReplayedAnnouncement(AnnouncementError):
    """Older (`created_at`) than an announcement this device already acted on for the same model."""

    code = "announcement_replayed"


class OversizeAnnouncement(AnnouncementError):
    """The announced bundle is larger than this device accepts (`UpdateConfig.max_bundle_bytes`)."""

    code = "announcement_oversize"


class DowngradeRefused(AnnouncementError):
    """The version is not above this device's anti-rollback floor and the announcement is no signed rollback."""

    code = "downgrade_refused"


class KnownBadVersion(AnnouncementError):
    """The version failed on this device before (`DeviceState.is_bad`): not retried."""

    code = "version_marked_bad"


class WrongPlatform(AnnouncementError):
    """This device's platform is not among the announcement's `platforms`."""

    code = "wrong_platform"


class AgentTooOld(AnnouncementError):
    """This agent is older than the announcement's `min_agent_version`."""

    code = "agent_too_old"


class WrongModel(AnnouncementError):
    """The announcement is for another model name than the one this device runs."""

    code = "wrong_model"


class DownloadError(UpdateError):
    """The bundle could not be fetched."""

    code = "download_failed"
    final = False


class DownloadRefused(DownloadError):
    """The server answered with a client error (4xx) or the URL scheme is not supported: retrying cannot help."""

    code = "download_refused"
    final = True


class DownloadTooLarge(DownloadError):
    """The server sent (or announced) more bytes than the signed announcement's `size` (endless-data defence)."""

    code = "download_oversize"
    final = True


class DownloadHashMismatch(DownloadError):
    """The complete download's size or sha256 differs from the signed announcement."""

    code = "download_hash_mismatch"
    final = True


class DownloadCancelled(DownloadError):
    """The agent is stopping; the `.part` file is kept and the download resumes on the next start."""

    code = "download_cancelled"
    final = False


class BundleRefused(UpdateError):
    """The downloaded bundle fails the loader's checks (signature, hashes, name/version vs the announcement)."""

    code = "bundle_refused"
    marks_bad = True  # its bytes are exactly what a trusted release key announced (sha256 matched)


class CheckFailed(UpdateError):
    """The staged candidate does not load, its golden frames do not match, or it is too slow on this device."""

    code = "check_failed"
    marks_bad = True


class SwapFailed(UpdateError):
    """The `current` link could not be replaced (the previous model keeps running)."""

    code = "swap_failed"


class ProbationFailed(UpdateError):
    """The new model misbehaved during probation (errors, fps drop, crash loop): rolled back."""

    code = "probation_failed"
    marks_bad = True
