"""What the registry's patient module changes in an object on its way out."""

from __future__ import annotations

from pydicom.dataset import Dataset

from storage.patientmodule import PatientModule, differences


def header(**attrs: str) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = (
        "H1",
        "Nordmann^Kari",
        "",
        "F",
    )
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_a_name_with_trailing_empty_components_is_the_same_name() -> None:
    pm = PatientModule("H1", "", "Nordmann^Kari", "", "F")
    assert differences(header(PatientName="Nordmann^Kari^^^"), pm) == {}
    assert differences(header(PatientName="Nordmann^Kari^^^=^"), pm) == {}
    assert differences(header(PatientName="Nordmann^Kari^Anne"), pm) == {"PatientName": pm.name}


def test_a_header_issuer_stays_with_its_id_when_the_registry_shows_none() -> None:
    """The registry shows an issuer only to tell apart equal values of two systems."""
    same = PatientModule("H1", "", "Nordmann^Kari", "", "F")
    assert differences(header(IssuerOfPatientID="HOSP"), same) == {}
    merged = PatientModule("H2", "", "Nordmann^Kari", "", "F")
    assert differences(header(IssuerOfPatientID="HOSP"), merged) == {
        "PatientID": "H2",
        "IssuerOfPatientID": "",
    }
    shown = PatientModule("H1", "OTHERHOSP", "Nordmann^Kari", "", "F")
    assert differences(header(IssuerOfPatientID="HOSP"), shown) == {
        "IssuerOfPatientID": "OTHERHOSP"
    }
