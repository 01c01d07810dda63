"""Keyed hashes (HMAC-SHA-256) that turn identities into a project's pseudonyms.

Whoever lacks the key cannot link a pseudonym, a shifted date or a new UID back to the
patient; whoever holds it can, which is why the key stays on the clinical side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

# Dates move back by 1 to 10 years: far enough that no real date survives, near enough that
# decades, seasons of the year aside, stay plausible.
_MIN_SHIFT_DAYS = 365
_SHIFT_SPAN_DAYS = 3287


class ProjectKey:
    """The secret of one project; everything derived from it is deterministic."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("a project key has at least 32 bytes")
        self._secret = secret

    def _mac(self, purpose: str, *parts: str) -> bytes:
        message = "\0".join((purpose, *parts)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def pseudonym(self, patient_id: str, issuer: str) -> str:
        """The patient's ID in this project: 'P' and 16 base-32 characters (80 bits)."""
        digest = self._mac("patient", patient_id, issuer)
        return "P" + base64.b32encode(digest[:10]).decode()

    def date_shift(self, patient_id: str, issuer: str) -> int:
        """Days (negative) added to every date of this patient, so intervals are kept."""
        digest = self._mac("date-shift", patient_id, issuer)
        return -(_MIN_SHIFT_DAYS + int.from_bytes(digest[:4], "big") % _SHIFT_SPAN_DAYS)

    def uid(self, original: str) -> str:
        """The project's UID for `original`: a 2.25 UID from a name-based (version 8) UUID."""
        digest = bytearray(self._mac("uid", original)[:16])
        digest[6] = (digest[6] & 0x0F) | 0x80  # RFC 9562 version 8, custom
        digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
        return f"2.25.{uuid.UUID(bytes=bytes(digest)).int}"
