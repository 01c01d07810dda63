"""Rejecting a quarantined study: refused under legal hold; otherwise rows, objects and audit
go together."""

from __future__ import annotations

from pathlib import Path

import httpx
from pydicom import dcmread
from sqlalchemy import select

from storage.archive import Archive
from storage.models import AuditEvent, Instance
from tests.conftest import Broker
from tests.dcmtk import storescu
from tests.test_dimse import wait_instances
from tests.test_pas import OLA_CR, broker, edited, pas  # noqa: F401  (fixtures)


def test_reject_keeps_held_studies_and_deletes_the_rest_whole(
    broker: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    stray = [edited(p, tmp_path / "stray" / p.name, PatientID="99999999999") for p in OLA_CR]
    assert storescu(broker.dicom_port, stray).returncode == 0
    wait_instances(broker, len(stray))
    study_uid = str(dcmread(stray[0]).StudyInstanceUID)
    token = broker.cli("token", "--user", "admin1", "--role", "radiology-admin").stdout.strip()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{broker.http_port}/api/v1/admin",
        headers={"Authorization": f"Bearer {token}"},
    )
    archive = Archive(broker.settings())
    try:
        with archive.sessions() as s:
            keys = list(s.scalars(select(Instance.object_key)))
        assert len(keys) == len(stray)

        r = api.put(f"/studies/{study_uid}/hold", json={"reason": "complaint 2026/17"})
        assert r.status_code == 200, r.text
        r = api.post(f"/quarantine/studies/{study_uid}/reject")
        assert r.status_code == 409 and "legal hold" in r.json()["detail"]
        assert all(archive.store.exists(k) for k in keys)

        assert api.delete(f"/studies/{study_uid}/hold").status_code == 204
        r = api.post(f"/quarantine/studies/{study_uid}/reject")
        assert r.status_code == 200 and r.json()["deleted_objects"] == len(stray)
        with archive.sessions() as s:
            assert not s.scalars(select(Instance)).all()
            (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "quarantine-reject"))
        assert event.actor == "admin1" and event.study_uid == study_uid
        assert not any(archive.store.exists(k) for k in keys)
        assert api.get("/quarantine").json()["studies"] == []
    finally:
        archive.close()
