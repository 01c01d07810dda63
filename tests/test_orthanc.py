"""Orthanc as a legacy PACS: it stores into the broker, queries it and retrieves from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import SAMPLES, Broker
from tests.dcmtk import movescu
from tests.orthanc import Orthanc
from tests.test_dimse import counts, wait_instances

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both


@pytest.fixture
def pair(broker_factory, tmp_path: Path) -> Iterator[tuple[Broker, Orthanc]]:
    """A broker whose peer table names Orthanc, and an Orthanc that knows the broker."""
    orthanc = Orthanc(tmp_path / "orthanc")
    peers = [
        {"ae": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"ae": "MOVESCU"},
    ]
    b = broker_factory({"PACSBROKER_PEERS": json.dumps(peers)}).start()
    orthanc.start({"broker": ("PACSBROKER", "127.0.0.1", b.dicom_port)})
    yield b, orthanc
    orthanc.stop()


def _sent(files: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}


def _orthanc_has(orthanc: Orthanc, sent: dict[str, Path]) -> None:
    """Every instance arrived in Orthanc with the data set the modality sent."""
    got = orthanc.get("/instances")
    assert len(got) == len(sent)
    for oid in got:
        path = orthanc.root / f"{oid}.dcm"
        path.write_bytes(orthanc.get(f"/instances/{oid}/file"))
        ds = dcmread(path)
        original = dcmread(sent[str(ds.SOPInstanceUID)])
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds == original


def test_orthanc_stores_queries_and_retrieves(pair: tuple[Broker, Orthanc]) -> None:
    b, orthanc = pair
    files = sorted((SAMPLES / "kari-ct").glob("*.dcm"))
    sent = _sent(files)
    study = {orthanc.upload(p)["ParentStudy"] for p in files}
    assert len(study) == 1

    job = orthanc.post("/modalities/broker/store", {"Resources": list(study), "Synchronous": True})
    assert job.get("FailedInstancesCount", 0) == 0, job
    wait_instances(b, len(files))

    query = orthanc.post(
        "/modalities/broker/query",
        {
            "Level": "Study",
            "Query": {"PatientID": "*", "StudyDate": "2024-", "ModalitiesInStudy": "CT"},
        },
    )
    answers = orthanc.get(f"/queries/{query['ID']}/answers?expand&simplify")
    assert len(answers) == 1
    uid = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert answers[0]["StudyInstanceUID"] == uid

    # Orthanc forgets the study, then fetches it back from the broker with C-MOVE.
    for sid in study:
        orthanc.http.delete(f"/studies/{sid}").raise_for_status()
    assert orthanc.get("/instances") == []
    orthanc.post(f"/queries/{query['ID']}/answers/0/retrieve", {"TargetAet": "ORTHANC"})
    _orthanc_has(orthanc, sent)
    assert counts(b)["instances"] == len(files)


def test_movescu_to_orthanc(pair: tuple[Broker, Orthanc]) -> None:
    b, orthanc = pair
    files = sorted((SAMPLES / "aase-mr").glob("*.dcm"))
    sent = _sent(files)
    for p in files:
        orthanc.upload(p)
    orthanc.post("/modalities/broker/store", {"Resources": orthanc.get("/studies")})
    wait_instances(b, len(files))
    for sid in orthanc.get("/studies"):
        orthanc.http.delete(f"/studies/{sid}").raise_for_status()

    uid = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    r = movescu(b.dicom_port, "ORTHANC", str(uid))
    assert r.returncode == 0, r.stderr
    _orthanc_has(orthanc, sent)
