"""Apply Table E.1-1 to a data set, every nested sequence included, with keyed replacements.

Attributes the table lists get its action under the project's options. Attributes it does not
list are handled by their value representation, because a table of one edition cannot know
the attributes later editions add: UIDs are replaced (except well-known DICOM UIDs and class or
coding-scheme identifiers), dates shifted or emptied, person names replaced, links and unread
(UN) values removed, and free text cleaned of the patient's known identifiers (those of the
stored header and those PAS has now) and of written dates. Public attributes the dictionary
does not know are removed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from storage.deid.profile import Option, action, method_codes
from storage.deid.pseudonyms import ProjectKey
from storage.patientmodule import PatientModule
from storage.patientmodule import apply as apply_patient

_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC"}
# UIDs that name a class, a transfer syntax or a coding scheme rather than an instance.
_CLASS_UIDS = {
    int(t)
    for t in (
        tag_for_keyword(k)
        for k in (
            "SOPClassUID",
            "ReferencedSOPClassUID",
            "MediaStorageSOPClassUID",
            "TransferSyntaxUID",
            "ImplementationClassUID",
            "AffectedSOPClassUID",
            "RequestedSOPClassUID",
            "CodingSchemeUID",
            "ContextGroupExtensionCreatorUID",
            "MappingResourceUID",
            "ReferencedSOPClassUIDInFile",
            "ReferencedTransferSyntaxUIDInFile",
            "ReferencedRelatedGeneralSOPClassUIDInFile",
            "RelatedGeneralSOPClassUID",
            "OriginalSpecializedSOPClassUID",
            "SOPClassesInStudy",
        )
    )
    if t is not None
}
_DUMMY: dict[str, Any] = {
    "PN": "ANONYMOUS",
    "AE": "ANONYMOUS",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "UR": "",
    **{vr: "ANONYMIZED" for vr in _TEXT},
    **{vr: 0 for vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV")},
}
# Norwegian national identity numbers (and D-numbers) anywhere in free text.
_NATIONAL_ID = r"\b\d{6}\s?\d{5}\b"
# Dates written in text (01.03.2024, 1/3/2024, 01.03.24, 2024-03-01, 20240301) would sit
# unshifted beside the shifted header dates. Digits or dotted numbers around one make it no
# date (1.2.840.10008), and a two-digit year takes two-digit days and months (not 5.3.12).
_DD, _MM, _YYYY = r"(?:0[1-9]|[12]\d|3[01])", r"(?:0[1-9]|1[0-2])", r"(?:19|20)\d\d"
_DATES = re.compile(
    r"(?<!\d)(?<!\d[-./])(?:"
    rf"(?:[1-9]|{_DD})[-./](?:[1-9]|{_MM})[-./]{_YYYY}"
    rf"|{_DD}[./]{_MM}[./]\d\d"
    rf"|{_YYYY}-{_MM}-{_DD}"
    rf"|{_YYYY}{_MM}{_DD}"
    r")(?![-./]?\d)"
)
# no longer than the shortest date it replaces, so a cleaned value still fits its VR
_DATE_PLACEHOLDER = "[date]"
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_ISSUER = 0x00100021
_BIRTH_DATE = 0x00100030
_STUDY_ID = 0x00200010
_ID_KEYWORDS = ("PatientID", "AccessionNumber", "OtherPatientIDs", "MedicalRecordLocator")
_NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName")
_TOP_LEVEL_SET = {_PATIENT_NAME, _PATIENT_ID, _ISSUER, _BIRTH_DATE, _STUDY_ID}
# Coded concepts and coding schemes name terms of a terminology, not people; cleaning them (a
# scheme 'TEST' for a patient 'Test^S R') would break the code and leave Type 1 attributes empty.
_CODE_TAGS = {
    int(t)
    for t in (
        tag_for_keyword(k)
        for k in (
            "CodeValue",
            "CodingSchemeDesignator",
            "CodingSchemeVersion",
            "CodeMeaning",
            "LongCodeValue",
            "URNCodeValue",
            "CodingSchemeURL",
        )
    )
    if t is not None
}


def is_well_known(uid: str) -> bool:
    """DICOM-defined UIDs (classes, syntaxes, well-known instances) identify nobody."""
    return uid.startswith("1.2.840.10008.") or uid in UID_dictionary


@dataclass(frozen=True)
class Subject:
    """Whose object it is, from its (current) patient module: pseudonym, date shift, scrub."""

    patient_id: str
    issuer: str
    pseudonym: str
    shift_days: int
    scrub: re.Pattern[str]


def _terms(ds: Dataset) -> set[str]:
    """The identifying strings free text must not repeat: IDs, name parts, birth date."""
    terms: list[str] = []
    for keyword in _ID_KEYWORDS:
        terms += [str(v).strip() for v in _values(ds.get(keyword)) if v]
    for keyword in _NAME_KEYWORDS:
        for name in _values(ds.get(keyword)):
            terms += [p for p in re.split(r"[\^=\s,]+", str(name or "")) if len(p) >= 2]
    birth = str(ds.get("PatientBirthDate") or "")
    if len(birth) == 8 and birth.isdigit():
        y, m, d = birth[:4], birth[4:6], birth[6:]
        terms += [birth, f"{d}.{m}.{y}", f"{d}{m}{y[2:]}", f"{y}-{m}-{d}", f"{d}/{m}/{y}"]
    return {t for t in terms if t}


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | list) else [value]


def _pattern(terms: Iterable[str]) -> re.Pattern[str]:
    # longest first, so that a whole name goes before one of its parts can match
    ordered = sorted(set(terms), key=len, reverse=True)
    alternatives = [rf"(?<!\w){re.escape(t)}(?!\w)" for t in ordered] + [_NATIONAL_ID]
    return re.compile("|".join(alternatives), re.IGNORECASE)


class Deidentifier:
    """De-identifies data sets for one project: its key, its options, its patient issuer."""

    def __init__(self, key: ProjectKey, options: Iterable[Option], issuer: str) -> None:
        self.key = key
        self.options = frozenset(options)
        self.issuer = issuer
        self.shift_dates = Option.RETAIN_LONG_MODIFIED_DATES in self.options

    def subject(self, ds: Dataset, earlier: Iterable[str] = ()) -> Subject:
        """Whose `ds` is; free text loses its identifiers and the `earlier` ones as well."""
        pid = str(ds.get("PatientID") or "")
        issuer = str(ds.get("IssuerOfPatientID") or "")
        return Subject(
            pid,
            issuer,
            self.key.pseudonym(pid, issuer),
            self.key.date_shift(pid, issuer),
            _pattern(_terms(ds) | set(earlier)),
        )

    def __call__(
        self, ds: Dataset, *, pixels_cleaned: bool = False, patient: PatientModule | None = None
    ) -> Dataset:
        """De-identify `ds` in place (its pixel data untouched) and give it new file meta;
        `patient` (PAS's patient module) replaces the header's, not its terms in free text."""
        # text typed under an old ID or name spelling still carries it: collect it first
        stored = _terms(ds)
        if patient is not None:
            ds = apply_patient(ds, patient)
        who = self.subject(ds, stored)
        self._walk(ds, who, top=True)
        ds.PatientName = who.pseudonym
        ds.PatientID = who.pseudonym
        ds.IssuerOfPatientID = self.issuer
        ds.PatientBirthDate = ""
        if "StudyInstanceUID" in ds:
            # Z allows a dummy; media (DICOMDIR) need a Study ID, so each study gets one
            ds.StudyID = "S" + self.key.pseudonym(str(ds.StudyInstanceUID), "study")[1:11]
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 Annex E, pacsbroker research export"
        ds.DeidentificationMethodCodeSequence = method_codes(self.options, pixels_cleaned)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self.shift_dates else "REMOVED"
        if pixels_cleaned:
            ds.BurnedInAnnotation = "NO"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        old_meta = getattr(ds, "file_meta", None)
        if old_meta is not None and "TransferSyntaxUID" in old_meta:
            meta.TransferSyntaxUID = old_meta.TransferSyntaxUID
        ds.file_meta = meta
        return ds

    # the walk

    def _walk(self, ds: Dataset, who: Subject, top: bool = False) -> None:
        for key in list(ds.keys()):
            tag = int(key)
            group = tag >> 16
            if (top and tag in _TOP_LEVEL_SET) or tag in _CODE_TAGS:
                continue  # set after the walk, or a code
            if (
                group % 2 == 1  # private
                or tag & 0xFFFF == 0  # group lengths would be stale
                or (group & 0xFF00 in (0x5000, 0x6000) and group % 2 == 0)
            ):
                # private attributes (no safe-private option), and whole curve and overlay
                # groups: removing only their data, as the table says, would leave them invalid
                del ds[tag]
                continue
            act = action(tag, self.options)
            if act is None and not keyword_for_tag(tag):
                act = "X"  # public but unknown to the dictionary: nothing says it is safe
            # still raw: a kept value is written back unparsed; no VR (implicit) or UN is
            # parsed first, as the dictionary VR decides what an unlisted attribute needs
            vr = ds.get_item(tag).VR
            if vr not in (None, "SQ", "UN") and (act or self._by_vr(vr)) == "K":
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                self._sequence(ds, elem, act, who)
            else:
                self._element(ds, elem, act, who)

    def _sequence(self, ds: Dataset, elem: DataElement, act: str | None, who: Subject) -> None:
        choices = set(act.split("/")) if act else set()
        if not act or choices & {"K", "C", "D", "U*"}:
            # kept, cleaned, dummy (D) or UIDs replaced within (U*): the items, de-identified,
            # so references inside SR, KOS and presentation states follow their objects
            for item in elem.value:
                self._walk(item, who)
        elif "Z" in choices:
            elem.value = Sequence()
        else:
            del ds[elem.tag]

    def _element(self, ds: Dataset, elem: DataElement, act: str | None, who: Subject) -> None:
        vr = elem.VR
        if act is None:
            act = self._by_vr(vr)
        elif "/" in act:
            choices = act.split("/")
            act = "U" if vr == "UI" and "U*" in choices else "D" if "D" in choices else "Z"
        if act == "K":
            return
        if act == "X":
            del ds[elem.tag]
        elif act == "U":
            elem.value = self._uids(elem)
        elif act == "Z":
            elem.value = None
        elif act == "D":
            elem.value = self._dummy(elem, who)
        elif act == "C":
            elem.value = self._clean(elem, who)

    def _by_vr(self, vr: str) -> str:
        """An action for an attribute the table does not list."""
        if vr == "UI":
            return "U"
        if vr in ("DA", "DT", "TM"):
            return "C" if self.shift_dates else "Z"
        if vr == "PN":
            return "D"
        if vr in _TEXT:
            return "C"
        if vr in ("UN", "UR"):
            # UN: any value, unread; UR: a link may carry the original UIDs (RetrieveURL)
            return "X"
        return "K"

    def _uids(self, elem: DataElement) -> Any:
        if int(elem.tag) in _CLASS_UIDS:
            return elem.value

        def one(uid: Any) -> str:
            text = str(uid).strip("\0 ")
            return text if not text or is_well_known(text) else self.key.uid(text)

        return _map(elem.value, one)

    def _dummy(self, elem: DataElement, who: Subject) -> Any:
        if elem.VR == "UI":
            return self._uids(elem)
        if elem.VR in ("DA", "DT") and self.shift_dates and elem.value:
            return self._clean(elem, who)
        return _DUMMY.get(elem.VR, elem.value if elem.VR in ("OB", "OW", "UN") else None)

    def _clean(self, elem: DataElement, who: Subject) -> Any:
        vr = elem.VR
        if vr == "DA":
            return _map(elem.value, lambda v: _shift(str(v), who.shift_days, 8))
        if vr == "DT":
            return _map(elem.value, lambda v: _shift(str(v), who.shift_days, 8, keep_rest=True))
        if vr in _TEXT or vr == "PN":
            return _map(elem.value, lambda v: _scrub(str(v), who.scrub, _DUMMY[vr]))
        return elem.value  # times keep their time of day; numbers carry no identity


def _map(value: Any, fn: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [fn(v) for v in value]
    return fn(value)


def _shift(value: str, days: int, width: int, keep_rest: bool = False) -> str:
    """A DA (or the date of a DT) moved by `days`; an unreadable or partial date is emptied."""
    text = value.strip()
    try:
        moved = dt.datetime.strptime(text[:width], "%Y%m%d").date() + dt.timedelta(days=days)
    except ValueError:
        return ""
    rest = text[width:] if keep_rest else ""
    return moved.strftime("%Y%m%d") + rest


def _scrub(text: str, pattern: re.Pattern[str], dummy: str) -> str:
    """`text` without identifiers, its dates replaced; one of nothing but identifiers becomes
    `dummy` (Annex E's D), since the attribute may be one that must not be empty."""
    cleaned = " ".join(_DATES.sub(_DATE_PLACEHOLDER, pattern.sub(" ", text)).split())
    return cleaned if cleaned or not text.strip() else dummy
