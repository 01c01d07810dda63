"""PAS is the master for demographics: reconciliation, ADT over MLLP, quarantine, PAS outage."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from sqlalchemy import select

from broker.pas.pdqm import PasClient, PasUnavailable, to_demographics
from broker.pas.reconcile import Reconciler, header_identifier
from storage import dicomheader, nationalid, registry
from storage.archive import Archive
from storage.db import make_engine, migrate, session_factory
from storage.demographics import NATIONAL_SYSTEMS, Demographics, Identifier
from storage.dicomheader import dataset_offset
from storage.models import Instance, Patient, PatientStatus
from storage.nationalid import IdKind
from tests.conftest import ROOT, SAMPLES, Broker, free_port
from tests.dcmtk import findscu, movescu, storescu
from tests.test_dimse import storescp, wait_instances
from tools.pas_sim import adt_message, sample_patients

PATIENTS = sample_patients()
KARI, OLA = (p["identifiers"][0]["value"] for p in (PATIENTS["p1"], PATIENTS["p2"]))
OLA_CR = sorted((SAMPLES / "ola-cr").glob("*.dcm"))


@pytest.fixture
def pas(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.pas_sim", "serve", "--port", str(port), "--seed-samples"],
        cwd=ROOT,
        stdout=open(tmp_path / "pas.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).is_success:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def broker(broker_factory, pas: str) -> Broker:
    dest = free_port()
    peers: list[dict[str, Any]] = [{"ae": ae} for ae in ("STORESCU", "FINDSCU", "MOVESCU")]
    peers.append({"ae": "STORESCP", "host": "127.0.0.1", "port": dest})
    b = broker_factory(
        {
            "PACSBROKER_PEERS": json.dumps(peers),
            "PACSBROKER_PAS_FHIR_URL": f"{pas}/fhir",
            "PACSBROKER_PAS_RETRY_INTERVAL": "1",
        }
    )
    b.dest_port = dest
    return b.start()


def edited(src: Path, out: Path, **values: str) -> Path:
    """A copy of a sample with patient attributes as a careless modality would type them."""
    ds = dcmread(src)
    for k, v in values.items():
        setattr(ds, k, v)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


def study_names(b: Broker, patient_id: str) -> list[str]:
    found = findscu(
        b.dicom_port,
        {"QueryRetrieveLevel": "STUDY", "PatientID": patient_id, "PatientName": ""},
    )
    return [str(s.PatientName) for s in found]


def mllp_send(b: Broker, tmp: Path, message: bytes) -> str:
    path = tmp / "msg.hl7"
    path.write_bytes(b"\x0b" + message + b"\x1c\x0d")  # mllp_send reads framed files
    exe = ROOT / ".venv" / "bin" / "mllp_send"
    r = subprocess.run(
        [str(exe), "-p", str(b.hl7_port), "-f", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.decode("utf-8", "replace")


def msa(ack: str) -> list[str]:
    line = next(s for s in ack.replace("\n", "\r").split("\r") if s.startswith("MSA"))
    return line.split("|")


def test_misspelled_name_is_indexed_and_sent_with_the_pas_name(broker: Broker, tmp_path: Path):
    src = sorted((SAMPLES / "kari-ct").glob("ct-s1-*.dcm"))
    files = [edited(p, tmp_path / "in" / p.name, PatientName="Nordman^Kary") for p in src]
    assert storescu(broker.dicom_port, files).returncode == 0
    wait_instances(broker, 2)
    assert study_names(broker, KARI) == ["Nordmann^Kari"]

    scp = storescp(broker.dest_port, tmp_path / "moved")  # type: ignore[attr-defined]
    try:
        uid = dcmread(files[0]).StudyInstanceUID
        assert movescu(broker.dicom_port, "STORESCP", uid).returncode == 0
    finally:
        scp.terminate()
        scp.wait()
    moved = list((tmp_path / "moved").iterdir())
    assert len(moved) == 2
    assert all(str(dcmread(p).PatientName) == "Nordmann^Kari" for p in moved)

    archive = Archive(broker.settings())
    try:
        with archive.sessions() as s:
            rows = list(s.scalars(select(Instance)))
        sent = {str(dcmread(p).SOPInstanceUID): p.read_bytes() for p in files}
        for inst in rows:
            stored, original = archive.store.get(inst.object_key), sent[inst.sop_uid]
            # the data set as sent, untouched (the file meta is the archive's own)
            assert stored[dataset_offset(stored) :] == original[dataset_offset(original) :]
            assert json.loads(inst.header_differences) == {"PatientName": "Nordman^Kary"}
    finally:
        archive.close()


def test_adt_update_merge_and_refusal(broker: Broker, tmp_path: Path) -> None:
    storescu(broker.dicom_port, sorted((SAMPLES / "kari-ct").glob("ct-s1-*.dcm")))
    storescu(broker.dicom_port, sorted((SAMPLES / "ola-cr").glob("*.dcm")))
    wait_instances(broker, 3)

    ack = mllp_send(broker, tmp_path, adt_message("A08", KARI, "Nordmann^Kari^Elisabeth"))
    assert msa(ack)[1] == "AA"
    # applied before the ACK: the very next query already sees it
    assert study_names(broker, KARI) == ["Nordmann^Kari^Elisabeth"]
    # and so do DICOMweb searches and the objects it sends
    tok = broker.cli("token", "--user", "dr", "--role", "clinician").stdout.strip()
    web = httpx.Client(
        base_url=f"http://127.0.0.1:{broker.http_port}/dicomweb",
        headers={"Authorization": f"Bearer {tok}"},
    )
    (found,) = web.get("/studies", params={"PatientID": KARI}).json()
    assert found["00100010"]["Value"][0]["Alphabetic"] == "Nordmann^Kari^Elisabeth"
    study = found["0020000D"]["Value"][0]
    (meta, *_) = web.get(f"/studies/{study}/metadata").json()
    assert meta["00100010"]["Value"][0]["Alphabetic"] == "Nordmann^Kari^Elisabeth"
    sent = web.get(f"/studies/{study}")
    assert b"Nordmann^Kari^Elisabeth" in sent.content

    latin1 = adt_message("A08", KARI, "Ødegård^Kari", charset="8859/1")
    assert msa(mllp_send(broker, tmp_path, latin1))[1] == "AA"
    assert study_names(broker, KARI) == ["Ødegård^Kari"]

    ack = mllp_send(broker, tmp_path, adt_message("A40", KARI, "Ødegård^Kari", prior=OLA))
    assert msa(ack)[1] == "AA"
    assert study_names(broker, OLA) == []
    assert web.get("/studies", params={"PatientID": OLA}).json() == []
    assert study_names(broker, KARI) == ["Ødegård^Kari", "Ødegård^Kari"]
    epr = broker.cli("token", "--user", "dips", "--role", "epr").stdout.strip()
    epj = f"http://127.0.0.1:{broker.http_port}/epj/v1/patients"
    auth = {"Authorization": f"Bearer {epr}"}
    gone = httpx.get(f"{epj}/{OLA}/studies", headers=auth)
    assert gone.status_code == 404 and f"merged into {KARI}" in gone.json()["detail"]
    assert len(httpx.get(f"{epj}/{KARI}/studies", headers=auth).json()["studies"]) == 2

    bad = adt_message("A08", "12345678901", "Feil^Nummer")
    answer = msa(mllp_send(broker, tmp_path, bad))
    assert answer[1] == "AE" and "national ID" in answer[3]
    rejected = msa(mllp_send(broker, tmp_path, b"MSH|^~\\&|X|Y|Z|W|20260101||ORU^R01|1|P|2.5\r"))
    assert rejected[1] == "AR"
    assert study_names(broker, KARI) == ["Ødegård^Kari", "Ødegård^Kari"]

    replay = adt_message("A08", KARI, "Someone^Else", control_id="fixed-1")
    assert msa(mllp_send(broker, tmp_path, replay))[1] == "AA"
    again = adt_message("A08", KARI, "Someone^Else^Again", control_id="fixed-1")
    assert "duplicate" in msa(mllp_send(broker, tmp_path, again))[3]
    assert study_names(broker, KARI) == ["Someone^Else", "Someone^Else"]

    new_id = nationalid.make(dt.date(1984, 3, 9), 123, synthetic=True)
    assert new_id
    ack = mllp_send(broker, tmp_path, adt_message("A47", new_id, "Someone^Else", prior=KARI))
    assert msa(ack)[1] == "AA"
    assert study_names(broker, KARI) == []
    assert study_names(broker, new_id) == ["Someone^Else", "Someone^Else"]


def test_invalid_national_id_goes_to_quarantine_until_assigned(
    broker: Broker, tmp_path: Path
) -> None:
    src = sorted((SAMPLES / "kari-ct").glob("ct-s2-*.dcm"))
    files = [edited(p, tmp_path / "in" / p.name, PatientID="12345678901") for p in src]
    assert storescu(broker.dicom_port, files).returncode == 0
    stray = [edited(p, tmp_path / "stray" / p.name, PatientID="99999999999") for p in OLA_CR]
    stray_uids = [str(dcmread(p).SOPInstanceUID) for p in stray]
    assert storescu(broker.dicom_port, stray).returncode == 0
    wait_instances(broker, 2 + len(stray))
    assert study_names(broker, "12345678901") == []
    assert study_names(broker, "*") == []

    token = broker.cli("token", "--user", "admin1", "--role", "radiology-admin").stdout.strip()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{broker.http_port}/api/v1/admin",
        headers={"Authorization": f"Bearer {token}"},
    )
    listed = {q["study_uid"]: q for q in api.get("/quarantine").json()["studies"]}
    assert len(listed) == 2 and all("invalid national ID" in q["reason"] for q in listed.values())
    stray_uid = str(dcmread(stray[0]).StudyInstanceUID)
    assert api.post(f"/quarantine/studies/{stray_uid}/reject").status_code == 200
    archive = Archive(broker.settings())
    try:
        with archive.sessions() as s:
            assert not s.scalars(select(Instance).where(Instance.sop_uid.in_(stray_uids))).all()
    finally:
        archive.close()
    (uid,) = [u for u in listed if u != stray_uid]
    r = api.post(f"/quarantine/studies/{uid}/assign", json={"patient_id": "H0000"})
    assert r.status_code == 404  # neither the registry nor PAS knows H0000
    # Kari is in PAS but not yet in the registry: registered from PAS as the study is filed
    r = api.post(f"/quarantine/studies/{uid}/assign", json={"patient_id": KARI})
    assert r.status_code == 200, r.text
    assert study_names(broker, KARI) == ["Nordmann^Kari"]
    storescu(broker.dicom_port, sorted((SAMPLES / "kari-ct").glob("ct-s1-*.dcm")))
    wait_instances(broker, 4)
    assert study_names(broker, KARI) == ["Nordmann^Kari"]  # one study: both series
    assert api.get("/quarantine").json()["studies"] == []
    clinical = broker.cli("token", "--user", "dr", "--role", "clinician").stdout.strip()
    r = httpx.get(
        f"http://127.0.0.1:{broker.http_port}/api/v1/admin/quarantine",
        headers={"Authorization": f"Bearer {clinical}"},
    )
    assert r.status_code == 403


def test_cli_assign_registers_a_patient_only_pas_knows(broker: Broker, tmp_path: Path) -> None:
    files = [edited(p, tmp_path / p.name, PatientID="12345678901") for p in OLA_CR]
    assert storescu(broker.dicom_port, files).returncode == 0
    wait_instances(broker, len(files))
    uid = str(dcmread(files[0]).StudyInstanceUID)
    r = broker.cli("quarantine", "assign", uid, "--patient", "H0000")
    assert r.returncode == 1 and "registry or PAS" in r.stderr
    r = broker.cli("quarantine", "assign", uid, "--patient", OLA)
    assert r.returncode == 0, r.stderr
    assert study_names(broker, OLA) == ["Hansen^Ola"]
    archive = Archive(broker.settings())
    try:
        with archive.sessions() as s:
            ola = s.scalars(select(Patient).where(Patient.patient_id == OLA)).one()
            assert ola.status == PatientStatus.VERIFIED
    finally:
        archive.close()


def test_pas_down_during_ingest_is_verified_later(broker: Broker, pas: str) -> None:
    httpx.post(f"{pas}/admin/down").raise_for_status()
    files = sorted((SAMPLES / "aase-mr").glob("*.dcm"))
    assert storescu(broker.dicom_port, files).returncode == 0
    wait_instances(broker, len(files))
    aase = PATIENTS["p3"]["identifiers"][0]["value"]

    def status() -> str:
        archive = Archive(broker.settings())
        try:
            with archive.sessions() as s:
                return s.scalars(select(Patient.status).where(Patient.patient_id == aase)).one()
        finally:
            archive.close()

    assert status() == PatientStatus.UNVERIFIED
    httpx.post(f"{pas}/admin/up").raise_for_status()
    deadline = time.time() + 30
    while status() != PatientStatus.VERIFIED and time.time() < deadline:
        time.sleep(0.5)
    assert status() == PatientStatus.VERIFIED
    assert study_names(broker, aase) == ["Ødegård^Åse"]


def test_wrong_pas_url_is_an_outage_not_an_unknown_patient(pas: str) -> None:
    """A 404 from a mistyped base URL must not quarantine every new patient."""
    client = PasClient(f"{pas}/no-such-fhir-base")
    with pytest.raises(PasUnavailable, match="404"):
        client.lookup(Identifier(NATIONAL_SYSTEMS[IdKind.FNR], KARI))
    assert PasClient(f"{pas}/fhir").lookup(Identifier("", "00000000000")) is None
    assert PasClient(f"{pas}/fhir").lookup(Identifier("", KARI)) is not None


def header(**values: Any) -> dicomheader.Header:
    """The parsed header of a sample CR with patient attributes set as a modality sent them."""
    ds = dcmread(OLA_CR[0])
    ds.IssuerOfPatientID = ""
    for k, v in values.items():
        setattr(ds, k, v)
    out = io.BytesIO()
    ds.save_as(out)
    return dicomheader.parse(out.getvalue())


def qualifiers(uid: str, kind: str = "ISO") -> list[Dataset]:
    item = Dataset()
    item.UniversalEntityID, item.UniversalEntityIDType = uid, kind
    return [item]


@pytest.mark.parametrize(
    ("values", "system", "problem"),
    [
        ({"PatientID": "H9001", "IssuerOfPatientID": "OTHERHOSP"}, "urn:ns:OTHERHOSP", ""),
        ({"PatientID": KARI, "IssuerOfPatientID": "FNR"}, NATIONAL_SYSTEMS[IdKind.FNR], ""),
        ({"PatientID": KARI, "IssuerOfPatientID": "NOR"}, NATIONAL_SYSTEMS[IdKind.FNR], ""),
        ({"PatientID": KARI}, NATIONAL_SYSTEMS[IdKind.FNR], ""),
        ({"PatientID": "H9001"}, "", ""),
        (
            {"PatientID": "H9001", "IssuerOfPatientIDQualifiersSequence": qualifiers("1.2.3.4")},
            "urn:oid:1.2.3.4",
            "",
        ),
        (
            {"PatientID": "H9001", "IssuerOfPatientIDQualifiersSequence": qualifiers("x", "DNS")},
            "",
            "",
        ),
        ({"PatientID": "H9001", "IssuerOfPatientID": "FNR"}, "", "exactly 11 digits"),
    ],
)
def test_header_issuers_are_normalised_as_hl7_namespaces(
    values: dict[str, Any], system: str, problem: str
) -> None:
    ident, why = header_identifier(header(**values), allow_synthetic=True)
    assert why.endswith(problem) if problem else why == ""
    if not problem:
        assert ident.system == system


def test_a_header_issuer_never_matches_another_namespace(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as s, s.begin():
        registry.apply_pas(s, Demographics((Identifier("urn:ns:HOSP", "H9001"),), "Hosp^Pasient"))
    rec = Reconciler(None, allow_synthetic=True)
    with sessions() as s, s.begin():
        other = rec.patient_for(s, header(PatientID="H9001", IssuerOfPatientID="OTHERHOSP"), {})
        same = rec.patient_for(s, header(PatientID="H9001", IssuerOfPatientID="HOSP"), {})
        unqualified = rec.patient_for(s, header(PatientID="H9001"), {})
        names = other.name, same.name, unqualified.name
    engine.dispose()
    assert names == ("Hansen^Ola", "Hosp^Pasient", "Hosp^Pasient")


def test_fhir_names_cannot_inject_pn_delimiters() -> None:
    demo = to_demographics({"name": [{"family": "O^Brien=X", "given": ["Kari\\Mari", "Ås"]}]})
    assert demo.name == "O Brien X^Kari Mari^Ås"
