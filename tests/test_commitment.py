"""Storage commitment with Orthanc as the requester (its REST API drives the SCU side)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select

import broker.commitment
from broker.dimse.commitment import REPORT, record
from broker.dimse.contexts import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from broker.jobs import JobRunner
from storage import jobs
from storage.archive import Archive
from storage.models import Commitment, Job
from storage.settings import Settings
from tests.conftest import SAMPLES, Broker
from tests.dcmtk import storescu
from tests.orthanc import Orthanc
from tests.test_dimse import wait_instances
from tests.test_jobs import wait_state

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


@pytest.fixture
def archive(tmp_path: Path, db_url: str) -> Iterator[Archive]:
    peers = [{"ae": "MOD", "host": "127.0.0.1", "port": 1}]
    a = Archive(
        Settings(data_dir=tmp_path, database_url=db_url, peers=peers, commitment_wait=0),
        run_migrations=True,
    )
    yield a
    a.close()


def request(archive: Archive, transaction: str) -> bool:
    with archive.sessions() as session, session.begin():
        return record(session, transaction, "MOD", "127.0.0.1", [])


def report_job(archive: Archive, transaction: str) -> Job:
    with archive.sessions() as session:
        c = session.scalar(select(Commitment).where(Commitment.transaction_uid == transaction))
        assert c is not None and c.job_fk is not None
        return jobs.get(session, c.job_fk)


def test_two_broker_processes_never_both_report(archive: Archive, monkeypatch) -> None:
    """Runners sharing one index (two broker processes): each report is sent once."""
    sent: list[str] = []
    monkeypatch.setattr(
        broker.commitment, "_send", lambda *a, **kw: sent.append(a[4].TransactionUID) or ""
    )
    runners = [
        JobRunner(archive, workers=1, lease=30, poll=0.02, reserved=[REPORT]) for _ in range(2)
    ]
    for r in runners:
        r.start()
    try:
        for i in range(10):
            assert request(archive, f"1.2.3.{i}")
        for i in range(10):
            job_id = report_job(archive, f"1.2.3.{i}").id
            assert wait_state(archive, job_id, "succeeded").result == json.dumps(
                {"transaction_uid": f"1.2.3.{i}", "requester": "MOD", "committed": 0, "failed": 0}
            )
    finally:
        for r in runners:
            r.stop()
    assert sorted(sent) == sorted(f"1.2.3.{i}" for i in range(10))


def test_an_unreachable_requester_is_retried_and_can_be_cancelled(archive: Archive) -> None:
    """Port 1 does not answer: the report job waits with the reason, an admin may cancel it,
    and a repeat of a reported transaction gets a report of its own."""
    assert request(archive, "1.9")
    assert not request(archive, "1.9")  # repeated while pending: one report
    runner = JobRunner(archive, workers=1, lease=30, poll=0.02)
    job = report_job(archive, "1.9")
    claimed = jobs.claim(archive.sessions, "me", [REPORT], 30)
    assert claimed is not None and claimed.id == job.id
    runner._run(claimed, "me")
    job = report_job(archive, "1.9")
    assert job.state == "queued" and job.run_after is not None
    assert job.message.startswith("not delivered: association to MOD@127.0.0.1:1")
    with archive.sessions() as session, session.begin():
        assert jobs.cancel(session, job.id, by="rita").state == "cancelled"
        c = session.scalar(select(Commitment))
        assert c is not None and c.status == "pending" and c.attempts == 1
        c.status = "reported"
    assert request(archive, "1.9")
    assert report_job(archive, "1.9").id != job.id


def test_a_requester_that_keeps_its_association_gets_the_report_on_it(
    broker_factory, tmp_path: Path
) -> None:
    """pynetdicom as a modality that waits on its association (it has no port of its own to
    report to: port 1), committing right after its C-STOREs while they are still ingested."""
    peers = [{"ae": "STORESCU"}, {"ae": "MODALITY", "port": 1}]
    b = broker_factory(
        {"PACSBROKER_PEERS": json.dumps(peers), "PACSBROKER_COMMITMENT_WAIT": "3"}
    ).start()
    assert storescu(b.dicom_port, CT).returncode == 0
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        return 0x0000, None

    ae = AE("MODALITY")
    ae.add_requested_context(STORAGE_COMMITMENT)
    assoc = ae.associate(
        "127.0.0.1",
        b.dicom_port,
        ae_title="PACSBROKER",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    sent = [dcmread(p) for p in CT]
    never = "1.2.826.0.1.3680043.10.1432.77"
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = [
        ref(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in sent
    ] + [ref(str(sent[0].SOPClassUID), never)]
    try:
        status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        deadline = time.time() + 30
        while not reports and time.time() < deadline:
            time.sleep(0.1)
    finally:
        assoc.release()
    assert reports, b.log.read_text()[-4000:]
    ((event_type, info),) = reports
    assert event_type == 2 and info.TransactionUID == request.TransactionUID
    assert {r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in sent
    }
    (failed,) = info.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (never, 0x0112)
    jobs_of = json.loads(b.cli("jobs", "list", "--json").stdout)
    (job,) = [j for j in jobs_of if j["kind"] == "commitment"]
    assert job["state"] == "succeeded" and job["result"]["association"] == "the requester's"


def ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item
