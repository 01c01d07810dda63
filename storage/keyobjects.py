"""Key Object Selection documents we create when a user marks key images (built with highdicom)."""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

# CID 7010 key object selection document titles a user may choose
TITLES: dict[str, Code] = {
    "113000": codes.DCM.OfInterest,
    "113002": codes.DCM.ForReferringProvider,
    "113003": codes.DCM.ForSurgery,
    "113004": codes.DCM.ForTeaching,
    "113005": codes.DCM.ForConference,
    "113006": codes.DCM.ForTherapy,
    "113007": codes.DCM.ForPatient,
    "113008": codes.DCM.ForPeerReview,
    "113009": codes.DCM.ForResearch,
    "113010": codes.DCM.QualityIssue,
    "113013": codes.DCM.BestInSet,
    "113020": codes.DCM.ForReportAttachment,
}


def new_uid(root: str) -> str:
    """A UID under the configured root, or a UUID-derived 2.25 UID when none is set."""
    return generate_uid(prefix=root or None)


def build(
    references: list[Dataset], *, title_code: str, description: str, author: str, uid_root: str
) -> bytes:
    """A KOS (Part 10, explicit VR little endian) selecting `references` from one study."""
    if title_code not in TITLES:
        raise ValueError(f"title {title_code!r} is not one of {sorted(TITLES)}")
    content = hd.ko.KeyObjectSelection(
        document_title=TITLES[title_code],
        referenced_objects=references,
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=author or "Unknown"
            ),
        ),
        description=description or None,
    )
    doc = hd.ko.KeyObjectSelectionDocument(
        evidence=references,
        content=content,
        series_instance_uid=new_uid(uid_root),
        series_number=990,
        sop_instance_uid=new_uid(uid_root),
        instance_number=1,
        manufacturer="pacsbroker",
    )
    out = BytesIO()
    doc.save_as(out, enforce_file_format=True)
    return out.getvalue()
