"""De-identification (PS3.15 Annex E) of the sample data and of SR/KOS with nested references:
the output passes dciodvfy, carries no source identity or UID, and keeps its references."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from storage import transcode
from storage.deid import burnedin
from storage.deid.deidentify import Deidentifier, is_well_known
from storage.deid.profile import DEFAULT_OPTIONS, Option, action
from storage.deid.pseudonyms import ProjectKey
from storage.patientmodule import PatientModule
from storage.research.export import encode
from storage.settings import PixelMask
from tests.conftest import SAMPLES
from tests.dciodvfy import errors as dciodvfy_errors

ALL = sorted(SAMPLES.rglob("*.dcm"))
KARI_CT = sorted((SAMPLES / "kari-ct").glob("ct-s1-*.dcm"))


def walk(ds: Dataset) -> Iterator[Any]:
    """Every element, in every item of every sequence."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def identity(paths: list[Path]) -> tuple[set[str], set[str]]:
    """(identifying strings, instance UIDs) of source objects: what must not come out."""
    strings: set[str] = set()
    uids: set[str] = set()
    for p in paths:
        ds = dcmread(p)
        strings |= {str(ds.PatientID), str(ds.AccessionNumber), str(ds.PatientBirthDate)}
        strings |= {part for part in str(ds.PatientName).split("^") if part}
        for elem in walk(ds):
            if elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                uids |= {str(v) for v in values if not is_well_known(str(v))}
    return strings, uids


def assert_clean(out: bytes, strings: set[str], uids: set[str]) -> Dataset:
    """No source identifier in any element (sequences included) nor in the raw bytes."""
    ds = dcmread(BytesIO(out))
    for elem in walk(ds):
        text = str(elem.value) if elem.VR not in ("OB", "OW", "UN") else ""
        for s in strings | uids:
            assert s not in text, f"{elem.keyword or elem.tag} still holds {s!r}"
    for s in strings | uids:
        for encoding in ("utf-8", "latin-1"):
            assert s.encode(encoding, "ignore") not in out, f"{s!r} in the raw bytes"
    return ds


def deidentifier(options: frozenset[Option] = DEFAULT_OPTIONS, key: bytes = b"") -> Deidentifier:
    return Deidentifier(ProjectKey(key or os.urandom(32)), options, "research:unit")


def run(deid: Deidentifier, path: Path, tmp: Path, name: str = "") -> tuple[bytes, Path]:
    out = encode(deid(dcmread(path)))
    target = tmp / (name or path.name)
    target.write_bytes(out)
    return out, target


def test_samples_pass_dciodvfy_without_identity(tmp_path: Path) -> None:
    deid = deidentifier()
    strings, uids = identity(ALL)
    shifts: dict[str, set[int]] = {}
    for path in ALL:
        source = dcmread(path, stop_before_pixels=True)
        out, target = run(deid, path, tmp_path)
        assert dciodvfy_errors(target) == [], path
        ds = assert_clean(out, strings, uids)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientName == ds.PatientID and str(ds.PatientID).startswith("P")
        assert ds.IssuerOfPatientID == "research:unit"
        assert ds.PatientBirthDate == ""
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        method = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert method == {"113100", "113105", "113107", "113108", "113109"}
        # kept by the options: sex (patient characteristics), manufacturer, descriptions
        assert ds.PatientSex == source.PatientSex
        assert ds.StudyDescription == source.StudyDescription
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "SourceApplicationEntityTitle" not in ds.file_meta
        days = (
            dt.date.fromisoformat(_iso(ds.StudyDate))
            - dt.date.fromisoformat(_iso(source.StudyDate))
        ).days
        assert days < -300
        shifts.setdefault(str(source.PatientID), set()).add(days)
    # one shift per patient (intervals kept), different patients shifted differently
    assert all(len(s) == 1 for s in shifts.values())
    assert len({next(iter(s)) for s in shifts.values()}) == len(shifts)


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


def test_same_key_same_result_other_key_other_result(tmp_path: Path) -> None:
    key = os.urandom(32)
    a = dcmread(BytesIO(run(deidentifier(key=key), ALL[0], tmp_path, "a.dcm")[0]))
    b = dcmread(BytesIO(run(deidentifier(key=key), ALL[0], tmp_path, "b.dcm")[0]))
    c = dcmread(BytesIO(run(deidentifier(), ALL[0], tmp_path, "c.dcm")[0]))
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a[keyword].value == b[keyword].value != c[keyword].value
    assert a.StudyDate == b.StudyDate


def test_options_change_the_table_actions() -> None:
    none: frozenset[Option] = frozenset()
    assert action(0x00080050, DEFAULT_OPTIONS) == "Z"  # Accession Number
    assert action(0x00080020, none) == "Z" and action(0x00080020, DEFAULT_OPTIONS) == "C"
    assert action(0x00101010, none) == "X" and action(0x00101010, DEFAULT_OPTIONS) == "K"
    assert action(0x00181000, none) == "X/Z/D" and action(0x00181000, DEFAULT_OPTIONS) == "K"
    assert action(0x0008103E, none) == "X" and action(0x0008103E, DEFAULT_OPTIONS) == "C"
    assert action(0x60023000, none) == "X"  # overlay data, in any overlay group
    assert action(0x00280010, DEFAULT_OPTIONS) is None  # Rows: not in the table


def test_without_options_dates_and_descriptions_go(tmp_path: Path) -> None:
    out, target = run(deidentifier(frozenset()), KARI_CT[0], tmp_path)
    ds = dcmread(BytesIO(out))
    assert dciodvfy_errors(target) == []
    assert ds.StudyDate == "" and "SeriesDescription" not in ds and ds.PatientSex == ""
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]


def _structured(tmp: Path) -> tuple[Path, Path]:
    cts = [dcmread(p) for p in KARI_CT]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Lege^Lise"),
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=cts,
        content=hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest,
            referenced_objects=cts,
            observer_person_context=observer,
        ),
        series_instance_uid=generate_uid(),
        series_number=90,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        institution_name="Synthetic Hospital",
    )
    finding = hd.sr.CodedConcept("121071", "DCM", "Finding")
    ct = cts[0]
    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=finding,
                value=f"{ct.PatientName} ({ct.PatientID}), born 12.04.1961, accession "
                f"{ct.AccessionNumber}: nodule in the right lung",
                relationship_type="CONTAINS",
            ),
            hd.sr.PnameContentItem(
                name=hd.sr.CodedConcept("121008", "DCM", "Person Observer Name"),
                value="Nordmann^Kari",
                relationship_type="CONTAINS",
            ),
            hd.sr.DateContentItem(
                name=hd.sr.CodedConcept("111060", "DCM", "Study Date"),
                value=dt.date(2024, 3, 1),
                relationship_type="CONTAINS",
            ),
            hd.sr.UIDRefContentItem(
                name=hd.sr.CodedConcept("110180", "DCM", "Study Instance UID"),
                value=ct.StudyInstanceUID,
                relationship_type="CONTAINS",
            ),
            hd.sr.ImageContentItem(
                name=hd.sr.CodedConcept("121112", "DCM", "Source of Measurement"),
                referenced_sop_class_uid=ct.SOPClassUID,
                referenced_sop_instance_uid=ct.SOPInstanceUID,
                relationship_type="CONTAINS",
            ),
        ]
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=cts,
        content=root,
        series_instance_uid=generate_uid(),
        series_number=91,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        institution_name="Synthetic Hospital",
    )
    kos_path, sr_path = tmp / "kos-src.dcm", tmp / "sr-src.dcm"
    kos.save_as(kos_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    return kos_path, sr_path


def _references(ds: Dataset) -> set[str]:
    return {
        str(e.value)
        for e in walk(ds)
        if e.keyword in ("ReferencedSOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    }


def test_sr_and_kos_references_follow_their_objects(tmp_path: Path) -> None:
    kos_src, sr_src = _structured(tmp_path)
    deid = deidentifier()
    strings, uids = identity([*KARI_CT, kos_src, sr_src])
    strings |= {"Lise", "1961"}  # names and birth year in SR text and observer context
    new_ct = [
        dcmread(BytesIO(run(deid, p, tmp_path, f"ct{i}.dcm")[0])) for i, p in enumerate(KARI_CT)
    ]
    targets = {str(d.SOPInstanceUID) for d in new_ct}
    targets |= {str(new_ct[0].StudyInstanceUID), str(new_ct[0].SeriesInstanceUID)}
    for source in (kos_src, sr_src):
        out, target = run(deid, source, tmp_path, "out-" + source.name)
        assert dciodvfy_errors(target) == [], source
        ds = assert_clean(out, strings - {"1961"} if source == kos_src else strings, uids)
        refs = _references(ds) - {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
        refs.add(str(ds.StudyInstanceUID))
        # every reference now points at the de-identified CT objects (study, series, images)
        assert refs and refs <= targets, refs - targets
        assert str(ds.StudyInstanceUID) == str(new_ct[0].StudyInstanceUID)
    sr = dcmread(tmp_path / "out-sr-src.dcm")
    items = {i.ValueType: i for i in sr.ContentSequence}
    assert "nodule in the right lung" in items["TEXT"].TextValue
    assert items["PNAME"].PersonName == "ANONYMOUS"
    assert items["DATE"].Date != "20240301" and items["DATE"].Date == sr.StudyDate
    assert str(items["UIDREF"].UID) == str(new_ct[0].StudyInstanceUID)


def _capture(tmp: Path, burned: str | None, manufacturer: str = "Acme") -> Path:
    """A secondary capture with white text-like pixels in its top band."""
    src = dcmread(KARI_CT[0])
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate"):
        setattr(ds, keyword, src[keyword].value)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = src.StudyInstanceUID, generate_uid()
    ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "101500", "A1", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = "1", 1, 1, ""
    ds.Laterality = ""
    ds.Modality, ds.ConversionType, ds.Manufacturer = "OT", "WSD", manufacturer
    if burned is not None:
        ds.BurnedInAnnotation = burned
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = np.full((32, 32), 60, dtype=np.uint8)
    pixels[0:6, :] = 255
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp / f"sc-{burned}-{manufacturer}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_burned_in_annotation_held_back_unless_masked(tmp_path: Path) -> None:
    mask = PixelMask(manufacturer="acme", rectangles=[(0, 0, 32, 6)])
    assert burnedin.screen(dcmread(_capture(tmp_path, "YES")), []).reason
    assert burnedin.screen(dcmread(_capture(tmp_path, None)), []).reason  # undeclared SC
    assert not burnedin.screen(dcmread(_capture(tmp_path, "NO")), []).reason
    assert not burnedin.screen(dcmread(KARI_CT[0]), []).reason  # CT: not a suspect kind
    assert burnedin.screen(dcmread(_capture(tmp_path, "YES", "Other")), [mask]).reason
    us = dcmread(SAMPLES / "ola-us" / "us-0000.dcm")
    assert not burnedin.screen(us, []).reason  # declares itself clean
    us.BurnedInAnnotation = "YES"
    assert "no pixel mask" in burnedin.screen(us, []).reason

    ds = dcmread(_capture(tmp_path, "YES"))
    verdict = burnedin.screen(ds, [mask])
    assert verdict.mask == mask and not verdict.reason
    burnedin.apply_mask(ds, mask)
    out = encode(deidentifier()(ds, pixels_cleaned=True))
    (tmp_path / "masked.dcm").write_bytes(out)
    assert dciodvfy_errors(tmp_path / "masked.dcm") == []
    result = dcmread(BytesIO(out))
    assert result.BurnedInAnnotation == "NO"
    assert "113101" in {i.CodeValue for i in result.DeidentificationMethodCodeSequence}
    assert int(result.pixel_array[:6].max()) == 0 and int(result.pixel_array[6:].min()) == 60

    # a compressed ultrasound is decoded, masked and stored uncompressed
    us_mask = PixelMask(manufacturer=str(us.Manufacturer), rectangles=[(0, 0, 128, 10)])
    burnedin.apply_mask(us, us_mask)
    assert int(us.pixel_array[:10].max()) == 0
    assert not us.file_meta.TransferSyntaxUID.is_compressed


def encapsulated_pdf(source: Path, folder: Path, text: str) -> Path:
    """An Encapsulated PDF in the source's study whose document names the patient."""
    src = dcmread(source)
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyID",
    ):
        setattr(ds, keyword, src[keyword].value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DOC", 77, 1
    ds.ConversionType, ds.Manufacturer, ds.BurnedInAnnotation = "WSD", "Acme", "YES"
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = src.StudyDate, "101500", ""
    ds.DocumentTitle, ds.ConceptNameCodeSequence = "Referral", []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document = f"%PDF-1.4\n% {text}\n%%EOF\n".encode()
    ds.EncapsulatedDocument = document + b"\0" * (len(document) % 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "referral-pdf.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_encapsulated_documents_held_back_unless_allowed(tmp_path: Path) -> None:
    ds = dcmread(encapsulated_pdf(KARI_CT[0], tmp_path, "Nordmann Kari 12846101282"))
    for kind in range(1, 6):  # PDF, CDA, STL, OBJ, MTL
        ds.SOPClassUID = f"1.2.840.10008.5.1.4.1.1.104.{kind}"
        assert "encapsulated" in burnedin.screen(ds, []).reason
        assert burnedin.screen(ds, [], allow_documents=True) == burnedin.Screening()
    # the project option is no Annex E option: no table column, no method code
    options = DEFAULT_OPTIONS | {Option.ALLOW_ENCAPSULATED_DOCUMENTS}
    assert Option.ALLOW_ENCAPSULATED_DOCUMENTS not in DEFAULT_OPTIONS
    assert action(0x0008103E, options) == "C"
    out = dcmread(BytesIO(encode(deidentifier(options)(ds))))
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == [
        "113100",
        "113107",
        "113108",
        "113105",
        "113109",
    ]


def test_cleaning_keeps_codes_and_values_that_must_not_be_empty(tmp_path: Path) -> None:
    ds = dcmread(KARI_CT[0])
    ds.PatientName = "Test^S R"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CT-THX", "TEST", "Test CT"
    request = Dataset()
    request.ScheduledProcedureStepID = ds.AccessionNumber
    request.ScheduledProtocolCodeSequence = [code]
    ds.RequestAttributesSequence = [request]
    ds.ProcedureCodeSequence = [code]
    source = tmp_path / "test-patient.dcm"
    ds.save_as(source, enforce_file_format=True)
    out, target = run(deidentifier(), source, tmp_path, "out.dcm")
    assert dciodvfy_errors(target) == []
    result = dcmread(BytesIO(out))
    for item in (result.ProcedureCodeSequence[0], result.RequestAttributesSequence[0]):
        kept = item.get("ScheduledProtocolCodeSequence", [item])[0]
        assert (kept.CodeValue, kept.CodingSchemeDesignator, kept.CodeMeaning) == (
            "CT-THX",
            "TEST",
            "Test CT",
        )
    step_id = result.RequestAttributesSequence[0].ScheduledProcedureStepID
    assert step_id and step_id != ds.AccessionNumber


def test_text_is_cleaned_of_the_stored_identity_and_the_pas_one(tmp_path: Path) -> None:
    ds = dcmread(KARI_CT[0])
    ds.PatientID, ds.PatientName = "LEGACY-4711", "Nordman^Kari"  # as the old PACS had it
    ds.StudyDescription = "CT thorax Nordman LEGACY-4711 f. 19610412"
    pas = PatientModule("12846101282", "2.16.578.1.12.4.1.4.1", "Nordmann^Kari", "19610412", "F")
    deid = deidentifier()
    result = dcmread(BytesIO(encode(deid(ds, patient=pas))))
    assert result.StudyDescription == "CT thorax f."
    assert result.PatientID == deid.key.pseudonym(pas.patient_id, pas.issuer)


def test_unlisted_links_unknown_and_un_elements_are_removed(tmp_path: Path) -> None:
    ds = dcmread(KARI_CT[0])
    ds.RetrieveURL = f"https://pacs.example/dicomweb/studies/{ds.StudyInstanceUID}"
    ds.add_new(0x00189999, "UN", f"{ds.PatientID} ".encode())  # public, unknown, unread
    ds.add_new(0x0018999A, "LO", "unknown public")
    code = Dataset()
    code.URNCodeValue, code.CodingSchemeDesignator = "urn:oid:2.16.840.1.113883.6.96", "SCT"
    code.CodeMeaning = "SNOMED CT"
    ds.ProcedureCodeSequence = [code]
    source = _saved(ds, tmp_path / "links.dcm")
    strings, uids = identity([source])
    out, target = run(deidentifier(), source, tmp_path, "out.dcm")
    assert dciodvfy_errors(target) == []
    result = assert_clean(out, strings, uids)
    assert "RetrieveURL" not in result
    assert 0x00189999 not in result and 0x0018999A not in result
    assert result.ProcedureCodeSequence[0].URNCodeValue == code.URNCodeValue  # a code: kept


def test_issuers_of_clinical_identifiers_are_removed(tmp_path: Path) -> None:
    ds = dcmread(KARI_CT[0])
    issuers = {
        "IssuerOfPatientIDQualifiersSequence": ("UniversalEntityID", "2.16.578.1.12.4.1.4.1"),
        "IssuerOfAccessionNumberSequence": ("LocalNamespaceEntityID", "AHUS"),
        "OrderPlacerIdentifierSequence": ("LocalNamespaceEntityID", "DIPS-ORDER"),
        "OrderFillerIdentifierSequence": ("LocalNamespaceEntityID", "RIS-FILLER"),
        "IssuerOfAdmissionIDSequence": ("LocalNamespaceEntityID", "ADMISSION-NS"),
        "IssuerOfServiceEpisodeIDSequence": ("LocalNamespaceEntityID", "EPISODE-NS"),
    }
    for sequence, (keyword, value) in issuers.items():
        item = Dataset()
        setattr(item, keyword, value)
        setattr(ds, sequence, [item])
    source = _saved(ds, tmp_path / "issuers.dcm")
    strings, uids = identity([source])
    strings |= {value for _, value in issuers.values()}
    out, target = run(deidentifier(), source, tmp_path, "out.dcm")
    assert dciodvfy_errors(target) == []
    result = assert_clean(out, strings, uids)
    assert not set(issuers) & set(result.dir())
    assert action(0x00100024, frozenset()) == "X"  # a supplement row over the generated table


def test_dates_written_in_text_are_replaced(tmp_path: Path) -> None:
    ds = dcmread(KARI_CT[0])
    ds.StudyDescription = "CT 01.03.2024"
    ds.SeriesDescription = "Ctrl 20240301 prev 1/3/2024"
    ds.ImageComments = "compared with 2024-03-01 and 01.03.24; version 5.3.12, 1.2.840.10008"
    out, target = run(deidentifier(), _saved(ds, tmp_path / "dates.dcm"), tmp_path, "out.dcm")
    assert dciodvfy_errors(target) == []
    result = dcmread(BytesIO(out))
    assert result.StudyDescription == "CT [date]"
    assert result.SeriesDescription == "Ctrl [date] prev [date]"
    assert result.ImageComments == "compared with [date] and [date]; version 5.3.12, 1.2.840.10008"


def _saved(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_big_endian_pixels_become_little_endian_one_bit_packed(tmp_path: Path) -> None:
    source = Path(get_testdata_file("liver_expb_1frame.dcm") or "")
    little = dcmread(get_testdata_file("liver_1frame.dcm") or "")
    out, target = run(deidentifier(), source, tmp_path)
    # the pydicom test file has errors of its own; the export must add none
    assert dciodvfy_errors(target) == dciodvfy_errors(source)
    result = dcmread(BytesIO(out))
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert result.BitsAllocated == 1 and result.PixelData == little.PixelData
    # wider samples (as sent to peers without big endian) are still byte-swapped
    mr = transcode.fit(
        dcmread(get_testdata_file("MR_small_bigendian.dcm") or ""), [ExplicitVRLittleEndian]
    )
    assert mr.PixelData == dcmread(get_testdata_file("MR_small.dcm") or "").PixelData
