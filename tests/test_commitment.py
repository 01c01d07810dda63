"""Storage commitment with Orthanc as the requester (its REST API drives the SCU side)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread

from broker.commitment import CommitmentReporter
from storage.archive import Archive
from storage.models import Commitment
from storage.settings import Settings
from tests.conftest import SAMPLES, Broker
from tests.orthanc import Orthanc
from tests.test_dimse import wait_instances

CT = sorted((SAMPLES / "kari-ct").glob("ct-s1-*.dcm"))


def outcome(orthanc: Orthanc, path: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        report = orthanc.get(path)
        if report.get("Status") != "Pending":
            return dict(report)
        time.sleep(0.3)
    raise TimeoutError(f"no storage commitment report: {report}")


def start(broker_factory, tmp_path: Path) -> tuple[Broker, Orthanc]:
    orthanc = Orthanc(tmp_path / "orthanc")
    peers = [{"ae": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]
    b = broker_factory(
        {"PACSBROKER_PEERS": json.dumps(peers), "PACSBROKER_COMMITMENT_WAIT": "3"}
    ).start()
    orthanc.start({"broker": ("PACSBROKER", "127.0.0.1", b.dicom_port)})
    return b, orthanc


def test_orthanc_gets_commitment_for_what_it_sent_and_failure_for_the_rest(
    broker_factory, tmp_path: Path
) -> None:
    b, orthanc = start(broker_factory, tmp_path)
    try:
        ids = [orthanc.upload(p)["ID"] for p in CT]
        orthanc.post("/modalities/broker/store", {"Resources": ids, "Synchronous": True})
        wait_instances(b, len(CT))
        job = orthanc.post("/modalities/broker/storage-commitment", {"Resources": ids})
        report = outcome(orthanc, job["Path"])
        assert report["Status"] == "Success", report
        assert {s["SOPInstanceUID"] for s in report["Success"]} == {
            str(dcmread(p).SOPInstanceUID) for p in CT
        }

        sop_class = str(dcmread(CT[0]).SOPClassUID)
        never = {"SOPClassUID": sop_class, "SOPInstanceUID": "1.2.826.0.1.3680043.10.1432.999"}
        job = orthanc.post(
            "/modalities/broker/storage-commitment",
            {"Resources": ids[:1], "DicomInstances": [never]},
        )
        report = outcome(orthanc, job["Path"])
        assert report["Status"] == "Failure", report
        (failed,) = report["Failures"]
        assert failed["SOPInstanceUID"] == never["SOPInstanceUID"]
        assert failed["FailureReason"] == 0x0112  # no such object instance
        assert len(report["Success"]) == 1
    finally:
        orthanc.stop()


def test_pending_commitment_survives_a_broker_crash(broker_factory, tmp_path: Path) -> None:
    b, orthanc = start(broker_factory, tmp_path)
    try:
        ids = [orthanc.upload(p)["ID"] for p in CT]
        orthanc.post("/modalities/broker/store", {"Resources": ids, "Synchronous": True})
        wait_instances(b, len(CT))
        never = {"SOPClassUID": str(dcmread(CT[0]).SOPClassUID), "SOPInstanceUID": "1.2.3.4.5.6"}
        job = orthanc.post(
            "/modalities/broker/storage-commitment", {"Resources": ids, "DicomInstances": [never]}
        )
        b.kill9()  # before the 3 s wait for the missing instance is over
        b.start()
        report = outcome(orthanc, job["Path"])
        assert report["Status"] == "Failure"
        assert len(report["Success"]) == len(CT) and len(report["Failures"]) == 1
    finally:
        orthanc.stop()


def test_two_broker_processes_never_both_report(tmp_path: Path, db_url: str) -> None:
    """Reporters sharing one index: each attempt of a pending report is claimed by one."""
    archive = Archive(Settings(data_dir=tmp_path, database_url=db_url), run_migrations=True)
    with archive.sessions() as session, session.begin():
        session.add(Commitment(transaction_uid="1.2.3", calling_ae="MOD", items="[]"))
    with archive.sessions() as session:
        row = session.query(Commitment).one()
    first, second = (CommitmentReporter(archive, wait=0) for _ in range(2))
    assert first._claim(row) and not second._claim(row)
    with archive.sessions() as session:
        assert session.query(Commitment).one().attempts == 1
    archive.close()
