"""Apply the registry's current patient module to an object on its way out."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from storage.query import normalise_pn

_LATIN1 = ("ISO_IR 100", "ISO 2022 IR 100")


@dataclass(frozen=True)
class PatientModule:
    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str


def differences(ds: Dataset, pm: PatientModule) -> dict[str, str]:
    """The patient attributes (keyword: current value) that the object has differently."""
    wanted = {
        "PatientID": pm.patient_id,
        "IssuerOfPatientID": pm.issuer,
        "PatientName": pm.name,
        "PatientBirthDate": pm.birth_date,
        "PatientSex": pm.sex,
    }
    if not pm.issuer and str(ds.get("PatientID") or "") == pm.patient_id:
        # the registry shows no issuer unless two systems share the ID: the header's issuer
        # of this same ID is not contradicted, only unknown to the registry
        del wanted["IssuerOfPatientID"]
    return {k: v for k, v in wanted.items() if _as_indexed(k, ds.get(k)) != _as_indexed(k, v)}


def _as_indexed(keyword: str, value: object) -> str:
    """A value as the index compares it: `OB^^^^` is the name `OB`, not a different one."""
    text = str(value or "")
    return normalise_pn(text) if keyword == "PatientName" else text


def apply(ds: Dataset, pm: PatientModule) -> Dataset:
    """Overwrite the patient attributes that differ; an unchanged object keeps its bytes."""
    changed = differences(ds, pm)
    if not changed:
        return ds
    if any(not v.isascii() for v in changed.values()) and not _can_encode(ds, changed):
        ds.decode()  # every text value to str, so it can be written in UTF-8
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in changed.items():
        if value:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    return ds


def _can_encode(ds: Dataset, values: dict[str, str]) -> bool:
    charset = ds.get("SpecificCharacterSet") or ""
    charsets = [charset] if isinstance(charset, str) else list(charset)
    if "ISO_IR 192" in charsets:
        return True
    if any(c in _LATIN1 for c in charsets):
        try:
            for v in values.values():
                v.encode("latin-1")
        except UnicodeEncodeError:
            return False
        return True
    return False
