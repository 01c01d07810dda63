"""UIDs for objects and studies the broker creates."""

from __future__ import annotations

import uuid

from pydicom.uid import generate_uid


def derived_uid(root: str, *parts: str) -> str:
    """A repeatable UID: the same parts give the same UID (a replayed order keeps its study, and
    a photo filed by accession joins the ordered study)."""
    if root:
        return generate_uid(prefix=root, entropy_srcs=list(parts))
    # PS3.5 B.2: a UUID as one integer under 2.25; name-based, hence repeatable
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, chr(31).join(parts)).int}"
