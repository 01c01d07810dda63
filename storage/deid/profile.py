"""The Basic Application Level Confidentiality Profile and the options a project chooses."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from storage.deid.annex_e import COLUMNS, TABLE
from storage.deid.supplement import SUPPLEMENT


class Option(StrEnum):
    """What a project chooses: the Annex E options this de-identifier implements (values name
    Table E.1-1 columns), and whether encapsulated documents may leave."""

    RETAIN_LONG_MODIFIED_DATES = "retain_long_modified_dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    # No Annex E option: a document's own bytes (PDF, CDA, 3D models) leave as they are, which
    # header de-identification cannot reach; only a project that says so takes them.
    ALLOW_ENCAPSULATED_DOCUMENTS = "allow_encapsulated_documents"


ANNEX_E_OPTIONS = frozenset(o for o in Option if o.value in COLUMNS)
DEFAULT_OPTIONS = ANNEX_E_OPTIONS

# PS3.16 CID 7050 as pydicom ships it, so the codes are not typed in here.
_CID_7050 = codes.CID7050
BASIC_PROFILE_CODE = _CID_7050.BasicApplicationConfidentialityProfile
CLEAN_PIXEL_DATA_CODE = _CID_7050.CleanPixelDataOption
OPTION_CODES = {
    Option.RETAIN_LONG_MODIFIED_DATES: (
        _CID_7050.RetainLongitudinalTemporalInformationModifiedDatesOption
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: _CID_7050.RetainPatientCharacteristicsOption,
    Option.CLEAN_DESCRIPTORS: _CID_7050.CleanDescriptorsOption,
    Option.RETAIN_DEVICE_IDENTITY: _CID_7050.RetainDeviceIdentityOption,
}
_OPTION_COLUMN = {opt: COLUMNS.index(opt.value) - 1 for opt in ANNEX_E_OPTIONS}


# The generated table with the newer editions' rows over it.
_ROWS = {**TABLE, **SUPPLEMENT}


def _row(tag: int) -> tuple[str, str, str] | None:
    key = f"{tag:08x}"
    row = _ROWS.get(key)
    if row is None and (tag >> 24) in (0x50, 0x60):
        # curves and overlays are listed once for their repeating groups
        row = _ROWS.get(key[:2] + "xx" + key[4:]) or _ROWS.get(key[:2] + "xxxxxx")
    return row


def action(tag: int, options: Iterable[Option]) -> str | None:
    """Table E.1-1's action for an attribute under the options: a chosen option's K, then C,
    then X, overrides the basic action; None when the table does not list the attribute."""
    row = _row(tag)
    if row is None:
        return None
    _name, basic, per_option = row
    chosen = {per_option[_OPTION_COLUMN[o]] for o in options if o in _OPTION_COLUMN} - {"."}
    for letter in ("K", "C", "X"):
        if letter in chosen:
            return letter
    return basic


def project_options(options: Iterable[Option], *, allow_documents: bool) -> frozenset[Option]:
    """A project's options: the Annex E ones it takes, and encapsulated documents if allowed."""
    extra = {Option.ALLOW_ENCAPSULATED_DOCUMENTS} if allow_documents else set()
    return frozenset(options) | extra


def method_codes(options: Iterable[Option], pixels_cleaned: bool) -> list[Dataset]:
    """De-identification Method Code Sequence items: the profile, then each option applied."""
    chosen = [BASIC_PROFILE_CODE]
    if pixels_cleaned:
        chosen.append(CLEAN_PIXEL_DATA_CODE)
    chosen += [code for o, code in OPTION_CODES.items() if o in set(options)]
    items = []
    for code in chosen:
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme_designator
        item.CodeMeaning = code.meaning
        items.append(item)
    return items
