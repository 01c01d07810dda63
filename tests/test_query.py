"""C-FIND matching over the real index (SQLite and PostgreSQL)."""

import datetime as dt
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode, encode
from sqlalchemy import select

from storage import registry
from storage.archive import Archive, object_key, sha256_of
from storage.catalog import Archived, Outcome, file_instances
from storage.demographics import NATIONAL_SYSTEMS, Identifier
from storage.dicomheader import parse
from storage.models import Patient, Rejection
from storage.nationalid import IdKind
from storage.query import Hit, Level, match, responses
from storage.settings import Settings
from tests.conftest import SAMPLES


def archived(data: bytes) -> Archived:
    h = parse(data)
    sha = sha256_of(data)
    return Archived(h, object_key(h, sha), len(data), sha, "TEST", dt.datetime.now(dt.UTC))


@pytest.fixture
def archive(tmp_path: Path, db_url: str) -> Archive:
    a = Archive(Settings(data_dir=tmp_path, database_url=db_url), run_migrations=True)
    items = [archived(p.read_bytes()) for p in sorted(SAMPLES.rglob("*.dcm"))]
    with a.sessions() as s, s.begin():
        assert set(file_instances(s, items)) == {Outcome.STORED}
    return a


def ident(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def find(a: Archive, level: Level, ci: bool = False, **keys: object) -> list[Dataset]:
    q = ident(level.value, **keys)
    with a.sessions() as s:
        hits = match(s, level, q, pn_case_insensitive=ci)
        return list(responses(s, level, hits, q, retrieve_ae="PB"))


def test_study_level_wildcard_and_counts(archive: Archive) -> None:
    r = find(
        archive,
        Level.STUDY,
        PatientName="Nord*",
        StudyInstanceUID="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="",
    )
    assert len(r) == 1
    assert r[0].ModalitiesInStudy == "CT"
    assert int(r[0].NumberOfStudyRelatedSeries) == 6
    assert int(r[0].NumberOfStudyRelatedInstances) == 12
    assert {e.keyword for e in r[0]} == {
        "QueryRetrieveLevel",
        "PatientName",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries",
    }


def test_date_ranges(archive: Archive) -> None:
    assert len(find(archive, Level.STUDY, StudyDate="20230101-")) == 3
    assert len(find(archive, Level.STUDY, StudyDate="-20221231")) == 1
    assert len(find(archive, Level.STUDY, StudyDate="20231120-20240301")) == 2
    assert len(find(archive, Level.STUDY, StudyDate="20231120")) == 1


def test_pn_case_and_unicode(archive: Archive) -> None:
    assert find(archive, Level.PATIENT, PatientName="nord*") == []
    assert len(find(archive, Level.PATIENT, ci=True, PatientName="nord*")) == 1
    r = find(archive, Level.PATIENT, PatientName="Øde*", PatientID="")
    assert len(r) == 1 and str(r[0].PatientName) == "Ødegård^Åse"
    assert r[0].SpecificCharacterSet == "ISO_IR 192"


def test_uid_list_and_modalities(archive: Archive) -> None:
    studies = find(archive, Level.STUDY, StudyInstanceUID="", ModalitiesInStudy="")
    uids = [str(s.StudyInstanceUID) for s in studies]
    assert len(uids) == 4
    both = find(archive, Level.STUDY, StudyInstanceUID="\\".join(uids[:2]))
    assert len(both) == 2
    assert len(find(archive, Level.STUDY, ModalitiesInStudy="US\\CR")) == 2


def test_non_indexed_key_and_unknown_key_returned_empty(archive: Archive) -> None:
    r = find(
        archive,
        Level.SERIES,
        Modality="MR",
        InstitutionName="Synth*",
        PerformingPhysicianName="",
        SeriesInstanceUID="",
    )
    assert len(r) == 1
    assert r[0].InstitutionName == "Synthetic Hospital"
    assert "PerformingPhysicianName" in r[0] and not r[0].PerformingPhysicianName
    assert find(archive, Level.SERIES, Modality="MR", InstitutionName="Other*") == []


def test_image_level_and_wildcard_question_mark(archive: Archive) -> None:
    r = find(archive, Level.IMAGE, Modality="M?", SOPInstanceUID="", InstanceNumber="")
    assert sorted(int(x.InstanceNumber) for x in r) == [1, 2, 3]


def add_copy(a: Archive, **attrs: object) -> Dataset:
    """Index a copy of a CT sample as a new study, series and instance, with `attrs` changed."""
    ds = dcmread(SAMPLES / "kari-ct" / "ct-s1-0000.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with a.sessions() as s, s.begin():
        assert file_instances(s, [archived(buf.getvalue())]) == [Outcome.STORED]
    return ds


def reject(a: Archive, *sop_uids: str) -> None:
    with a.sessions() as s, s.begin():
        s.add_all(Rejection(sop_uid=uid, by_sop_uid="1.2.3.4", code="113001") for uid in sop_uids)


def test_open_ended_ranges_skip_empty_values(archive: Archive) -> None:
    add_copy(archive, StudyDate="", StudyTime="")
    assert len(find(archive, Level.STUDY, StudyDate="-20221231")) == 1
    assert len(find(archive, Level.STUDY, StudyDate="20230101-")) == 3
    every = find(archive, Level.STUDY, StudyTime="")
    assert len(find(archive, Level.STUDY, StudyTime="-235959")) == len(every) - 1


def test_pn_trailing_empty_components_and_case_option_outside_sql(archive: Archive) -> None:
    add_copy(archive, PatientName="OB^^^^", PatientID="PN1", PerformingPhysicianName="Lege^Lise^^")
    for query in ("OB", "OB^^", "OB^^^^="):
        assert len(find(archive, Level.PATIENT, PatientName=query)) == 1, query
    assert len(find(archive, Level.SERIES, PerformingPhysicianName="Lege^Lise")) == 1
    assert find(archive, Level.SERIES, PerformingPhysicianName="lege^lise") == []
    assert len(find(archive, Level.SERIES, ci=True, PerformingPhysicianName="lege^lise")) == 1
    assert len(find(archive, Level.SERIES, ci=True, PerformingPhysicianName="LEGE*")) == 1


def test_rejected_instances_hide_their_series_and_studies(archive: Archive) -> None:
    (ct,) = find(archive, Level.STUDY, PatientName="Nord*", StudyInstanceUID="")
    study = str(ct.StudyInstanceUID)
    extra = add_copy(archive, StudyInstanceUID=study, Modality="OT")
    alone = add_copy(archive, AccessionNumber="REJ1")
    reject(archive, str(extra.SOPInstanceUID), str(alone.SOPInstanceUID))

    assert find(archive, Level.STUDY, AccessionNumber="REJ1") == []
    assert find(archive, Level.SERIES, SeriesInstanceUID=str(alone.SeriesInstanceUID)) == []
    series = find(archive, Level.SERIES, StudyInstanceUID=study, NumberOfSeriesRelatedInstances="")
    assert len(series) == 6 and all(int(s.NumberOfSeriesRelatedInstances) == 2 for s in series)
    (st,) = find(
        archive,
        Level.STUDY,
        StudyInstanceUID=study,
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
    )
    assert st.ModalitiesInStudy == "CT"
    assert (int(st.NumberOfStudyRelatedSeries), int(st.NumberOfStudyRelatedInstances)) == (6, 12)
    assert find(archive, Level.STUDY, ModalitiesInStudy="OT") == []
    (pt,) = find(archive, Level.PATIENT, PatientName="Nord*", NumberOfPatientRelatedInstances="")
    assert int(pt.NumberOfPatientRelatedInstances) == 12


def test_answers_keep_stored_text_and_declare_utf8_when_not_ascii(archive: Archive) -> None:
    # ISO 2022 escapes are ASCII bytes: copied as stored they would be read as ASCII text
    add_copy(
        archive,
        SpecificCharacterSet=["ISO 2022 IR 6", "ISO 2022 IR 87"],
        AccessionNumber="ISO2022",
        StudyDescription="\u5c71\u7530",
    )
    add_copy(archive, AccessionNumber="MULTI", OtherPatientIDs=["P\u00c5", "P2"])
    for syntax in (None, (False, True), (True, True)):
        (jp,) = find_as(archive, syntax, AccessionNumber="ISO2022", StudyDescription="")
        assert jp.SpecificCharacterSet == "ISO_IR 192"
        assert jp.StudyDescription == "\u5c71\u7530"
        (multi,) = find_as(archive, syntax, AccessionNumber="MULTI", OtherPatientIDs="")
        assert multi.SpecificCharacterSet == "ISO_IR 192"
        assert list(multi.OtherPatientIDs) == ["P\u00c5", "P2"]


def test_answers_encode_alike_in_every_syntax_and_read_late_tags(archive: Archive) -> None:
    add_copy(archive, AccessionNumber="LATE", OtherPatientIDs="OP1", StudyDescription="Late")
    keys = dict(AccessionNumber="LATE", StudyDescription="", OtherPatientIDs="", SeriesNumber="")
    (plain,) = find_as(archive, None, **keys)
    assert plain.OtherPatientIDs == "OP1"  # past every other requested tag in the header
    for implicit in (False, True):
        (ds,) = find_as(archive, (implicit, True), **keys)
        data = encode(ds, implicit, True)
        assert data == encode(plain, implicit, True)
        back = decode(BytesIO(data), implicit, True)
        assert (back.AccessionNumber, back.StudyDescription) == ("LATE", "Late")
        assert back.OtherPatientIDs == "OP1" and "SeriesNumber" in back


def find_as(a: Archive, syntax: tuple[bool, bool] | None, **keys: object) -> list[Dataset]:
    q = ident("STUDY", **keys)
    with a.sessions() as s:
        hits = match(s, Level.STUDY, q, pn_case_insensitive=False)
        return list(responses(s, Level.STUDY, hits, q, retrieve_ae="PB", syntax=syntax))


def test_common_study_keys_come_from_the_index_without_reading_headers(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = add_copy(archive, AccessionNumber="COLS", StudyDescription="Thorax")

    def unread(*_args: object) -> None:
        raise AssertionError("the stored header was read")

    monkeypatch.setattr(Hit, "attrs", unread)
    keys = dict(StudyInstanceUID="", StudyDate="", StudyDescription="", PatientName="")
    (ds,) = find_as(archive, (False, True), AccessionNumber="COLS", **keys)
    assert (ds.StudyInstanceUID, ds.StudyDate, ds.StudyDescription, ds.AccessionNumber) == (
        sent.StudyInstanceUID,
        sent.StudyDate,
        "Thorax",
        "COLS",
    )


def test_values_the_index_cannot_hold_whole_are_answered_as_stored(archive: Archive) -> None:
    long_text = "Thorax " * 10  # 70 characters: longer than LO allows, and than the column
    add_copy(archive, AccessionNumber="ODD", StudyDescription=long_text, StudyDate="2020.01.01")
    (ds,) = find_as(archive, None, AccessionNumber="ODD", StudyDescription="", StudyDate="")
    assert ds.StudyDescription == long_text.strip()
    assert ds.StudyDate == "2020.01.01"


def test_an_issuer_in_the_query_matches_the_registrys_system_of_the_id(archive: Archive) -> None:
    """The shown issuer is empty unless two systems share a value; the FNR's issuer, by OID
    or by the name senders use, still finds the patient whose FNR the registry holds."""
    with archive.sessions() as s, s.begin():
        patient = s.scalars(select(Patient).order_by(Patient.id)).first()
        assert patient is not None
        patient.issuer = ""  # as for a patient PAS registered first
        pid = patient.patient_id
        registry.add_identifiers(s, patient, [Identifier(NATIONAL_SYSTEMS[IdKind.FNR], pid)])
    oid = NATIONAL_SYSTEMS[IdKind.FNR].removeprefix("urn:oid:")
    for issuer, found in ((oid, 1), ("FNR", 1), ("", 1), ("OTHERHOSP", 0), ("1.2.3", 0)):
        hits = find(archive, Level.PATIENT, PatientID=pid, IssuerOfPatientID=issuer)
        assert len(hits) == found, issuer
