"""Near/far tiers on two real MinIO buckets: an HL7 order prefetches the patient's priors into
near, a C-MOVE of a prior is served from near, and near keeps its budget under ingest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import SAMPLES, Broker, MinioServer, free_port
from tests.dcmtk import movescu, storescu
from tests.test_dimse import storescp, wait_instances
from tests.test_worklist import hl7_send, order_message

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

# the sample's uncompressed little-endian images, so plain storescu can send every copy
KARI_CT = sorted((SAMPLES / "kari-ct").glob("ct-s[12]-*.dcm"))
PATIENT = str(dcmread(KARI_CT[0]).PatientID)
BUDGET_MB = 0.5


def study(out: Path, date: str, modality: str = "CT") -> str:
    """A copy of the sample CT study as a new study of the same patient on `date`."""
    uid, series = generate_uid(), generate_uid()
    out.mkdir(parents=True)
    for i, src in enumerate(KARI_CT):
        ds = dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = date
        ds.Modality = modality
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(out / f"{i}.dcm", enforce_file_format=True)
    return uid


def api(b: Broker, method: str, path: str, **kw: Any) -> Any:
    tok = b.cli("token", "--user", "admin", "--role", "radiology-admin").stdout.strip()
    r = httpx.request(
        method,
        f"http://127.0.0.1:{b.http_port}{path}",
        headers={"Authorization": f"Bearer {tok}"},
        timeout=30,
        **kw,
    )
    assert r.is_success, r.text
    return r.json()


def near_studies(b: Broker) -> dict[str, int]:
    """Objects near holds per study, read from the near bucket itself."""
    from minio import Minio

    s = b.settings()
    client = Minio(s.near_s3_endpoint, s.s3_access_key, s.s3_secret_key, secure=False)
    held: dict[str, int] = {}
    for obj in client.list_objects(s.near_s3_bucket, recursive=True):
        uid = str(obj.object_name).split("/")[0]
        held[uid] = held.get(uid, 0) + 1
    return held


def wait_job(b: Broker, job_id: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job: dict[str, Any] = api(b, "GET", f"/api/v1/admin/jobs/{job_id}")
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def test_order_prefetches_priors_and_near_keeps_its_budget(
    broker_factory, minio: MinioServer, tmp_path: Path
) -> None:
    dest = free_port()
    peers = [{"ae": "STORESCU"}, {"ae": "MOVESCU"}, {"ae": "STORESCP", "port": dest}]
    b = broker_factory(
        {
            **minio.env("pacs-far"),
            "PACSBROKER_NEAR_S3_ENDPOINT": f"127.0.0.1:{minio.port}",
            "PACSBROKER_NEAR_S3_BUCKET": "pacs-near",
            "PACSBROKER_NEAR_BUDGET_MB": str(BUDGET_MB),
            "PACSBROKER_NEAR_ON_INGEST": "true",
            "PACSBROKER_PEERS": json.dumps(peers),
        }
    ).start()
    dates = ["20250105", "20240610", "20231120", "20230301", "20120101"]
    priors = [study(tmp_path / f"ct{i}", d) for i, d in enumerate(dates)]
    mr = study(tmp_path / "mr", "20250201", "MR")
    for d in [*dates, "mr"]:
        path = tmp_path / (d if d == "mr" else f"ct{dates.index(d)}")
        assert storescu(b.dicom_port, sorted(path.iterdir())).returncode == 0
    wait_instances(b, 6 * len(KARI_CT))
    evicted = api(b, "POST", "/api/v1/admin/near/evict", json={"fraction": 0})
    assert wait_job(b, evicted["id"])["state"] == "succeeded"
    assert near_studies(b) == {}

    rule = {"name": "CT priors", "modalities": ["CT"], "years": 5, "max_studies": 3}
    api(b, "POST", "/api/v1/admin/prefetch/rules", json=rule)
    acks = hl7_send(b, order_message("NW", "PF1", patient=PATIENT, name="Nordmann^Kari"))
    assert acks[1] == "AA", acks
    (job,) = api(b, "GET", "/api/v1/admin/jobs", params={"kind": "prefetch"})
    job = wait_job(b, job["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["studies"] == priors[:3]  # newest three CT within five years
    assert near_studies(b) == {uid: len(KARI_CT) for uid in priors[:3]}
    assert mr not in near_studies(b) and priors[4] not in near_studies(b)

    scp = storescp(dest, tmp_path / "moved")
    try:
        assert movescu(b.dicom_port, "STORESCP", priors[1]).returncode == 0
    finally:
        scp.terminate()
        scp.wait(10)
    assert len(list((tmp_path / "moved").iterdir())) == len(KARI_CT)
    served = f"served {len(KARI_CT)} from near, 0 from far"
    deadline = time.time() + 10
    while served not in b.log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    assert served in b.log.read_text()

    budget = int(BUDGET_MB * (1 << 20))
    stored = 0
    for i in range(40):  # twice the budget, written through to near
        path = tmp_path / f"new{i}"
        study(path, "20261125")
        assert storescu(b.dicom_port, sorted(path.iterdir())).returncode == 0
        stored += sum(p.stat().st_size for p in path.iterdir())
        if stored > 2 * budget:
            break
    wait_instances(b, (7 + i) * len(KARI_CT))
    report = api(b, "GET", "/api/v1/admin/storage")["tiers"]
    assert 0 < report["near"]["bytes"] <= budget
    held = near_studies(b)
    assert all(held.get(uid) == len(KARI_CT) for uid in priors[:3])  # pinned by the prefetch
    assert report["near"]["reads"] >= len(KARI_CT) and report["hit_ratio"] > 0
    assert report["far"]["objects"] == (7 + i) * len(KARI_CT) and report["far"]["bytes"] > budget

    r = b.cli("prefetch-rules", "add", "MR priors", "--modality", "mr", "--on-admission")
    assert r.returncode == 0, r.stderr
    rules = json.loads(b.cli("prefetch-rules", "list", "--json").stdout)
    assert [(x["name"], x["modalities"], x["on_admission"]) for x in rules][-1] == (
        "MR priors",
        ["MR"],
        True,
    )
    usage = json.loads(b.cli("storage", "--json").stdout)
    assert {m["modality"]: m["studies"] for m in usage["by_modality"]}["MR"] == 1
    text = b.cli("storage").stdout
    assert "near:" in text and f"far:  {(7 + i) * len(KARI_CT)} objects" in text
    r = b.cli("prefetch", "--study", mr, "--wait")
    assert r.returncode == 0, r.stderr
    assert near_studies(b).get(mr) == len(KARI_CT)
    evicted = json.loads(b.cli("evict", "--fraction", "0", "--wait", "--json").stdout)
    assert evicted["state"] == "succeeded"
    assert near_studies(b) == {uid: len(KARI_CT) for uid in [*priors[:3], mr]}  # all pinned


def test_kill9_during_a_prefetch_then_restart_finishes_it(
    broker_factory, minio: MinioServer, tmp_path: Path
) -> None:
    b = broker_factory(
        {
            **minio.env("pacs-far"),
            "PACSBROKER_NEAR_DIR": str(tmp_path / "near"),
            "PACSBROKER_PREFETCH_PAUSE": "0.7",
            "PACSBROKER_JOB_LEASE": "3",
            "PACSBROKER_PEERS": json.dumps([{"ae": "STORESCU"}]),
        }
    ).start()
    uids = [study(tmp_path / f"s{i}", f"2025010{i + 1}") for i in range(5)]
    for i in range(5):
        assert storescu(b.dicom_port, sorted((tmp_path / f"s{i}").iterdir())).returncode == 0
    wait_instances(b, 5 * len(KARI_CT))
    job = api(b, "POST", "/api/v1/admin/prefetch", json={"study_uids": uids})
    deadline = time.time() + 60
    while (j := api(b, "GET", f"/api/v1/admin/jobs/{job['id']}"))["done"] < len(KARI_CT):
        assert time.time() < deadline, j
        time.sleep(0.05)
    b.kill9()
    assert j["state"] == "running" and j["done"] < 5 * len(KARI_CT)

    b.start()
    j = wait_job(b, job["id"], timeout=90)
    assert j["state"] == "succeeded" and j["attempts"] == 2, j
    assert j["result"]["studies"] == uids
    assert j["result"]["copied"] + j["result"]["present"] == 5 * len(KARI_CT)
    held = {}
    for p in (tmp_path / "near").rglob("*.dcm"):
        uid = p.relative_to(tmp_path / "near").parts[0]
        held[uid] = held.get(uid, 0) + 1
    assert held == {uid: len(KARI_CT) for uid in uids}
