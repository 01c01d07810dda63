"""Retention rules, legal holds, IOCM rejections and fixity: in-process against the real index
(SQLite and PostgreSQL), and end to end against the broker and MinIO, including kill -9."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.sr.codedict import codes
from sqlalchemy import func, select

from sample_dicom.generate import cr_image, large_ct
from storage import jobs, removal, retention
from storage.archive import Archive, object_key, sha256_of
from storage.catalog import Archived, Outcome, file_instances
from storage.dicomheader import parse
from storage.models import (
    AuditEvent,
    Instance,
    Job,
    JobState,
    PendingDeletion,
    Rejection,
    Series,
    Study,
)
from storage.objects import ObjectStoreError
from storage.settings import Settings
from tests.conftest import SAMPLES, Broker, MinioServer
from tests.dcmtk import findscu, storescu
from tests.test_dimse import wait_instances

MR, CR, CT, US = "aase-mr", "ola-cr", "kari-ct", "ola-us"
CHILD = ("Barn^Emma", dt.date(2016, 5, 5), "F", 44)  # 3 years old at her study in 2020
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
QUIET = {"PACSBROKER_RETENTION_SWEEP_HOURS": "0", "PACSBROKER_FIXITY_HOURS": "0"}


def days_since(day: dt.date) -> int:
    """A keep period whose cutoff is `day`, whatever today is."""
    return (dt.datetime.now(dt.UTC).date() - day).days


def study_uid(folder: str | Path) -> str:
    path = folder if isinstance(folder, Path) else SAMPLES / folder
    return str(dcmread(next(path.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def child_cr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("child")
    cr_image(out, CHILD, dt.date(2020, 2, 2))
    return out


# --- in process --------------------------------------------------------------------------


def file(a: Archive, paths: list[Path], ae: str) -> None:
    items = []
    for p in paths:
        data = p.read_bytes()
        h, sha = parse(data), sha256_of(data)
        a.store.put(object_key(h, sha), data)
        items.append(Archived(h, object_key(h, sha), len(data), sha, ae, dt.datetime.now(dt.UTC)))
    with a.sessions() as s, s.begin():
        file_instances(s, items)


@pytest.fixture
def archive(tmp_path: Path, db_url: str, child_cr: Path) -> Any:
    a = Archive(Settings(data_dir=tmp_path, database_url=db_url), run_migrations=True)
    file(a, sorted(SAMPLES.rglob("*.dcm")), "STORESCU")
    file(a, sorted(child_cr.glob("*.dcm")), "BARNEKLINIKK")
    yield a
    a.close()


def add_rule(a: Archive, **spec: Any) -> int:
    with a.sessions() as s, s.begin():
        return retention.save_rule(s, retention.RuleSpec(**spec), actor="t", source="t").id


def planned(a: Archive) -> dict[str, dict[str, Any]]:
    with a.sessions() as s:
        return {d["study_uid"]: d for d in retention.dry_run(s, a.settings).as_dict()["studies"]}


def run_sweep(a: Archive, job_id: int | None = None) -> Job:
    """Claim the sweep and run it here, as the broker's runner would."""
    if job_id is None:
        with a.sessions() as s, s.begin():
            job = retention.start_sweep(s, created_by="pytest")
            assert job is not None
    job = jobs.claim(a.sessions, "pytest", [retention.SWEEP], 30)
    assert job is not None
    ctx = jobs.JobContext.of(job, a, "pytest", 30, threading.Event())
    try:
        result = retention.sweep(ctx)
    except Exception as e:
        jobs.finish(a.sessions, job.id, "pytest", JobState.FAILED, message=str(e))
    else:
        jobs.finish(a.sessions, job.id, "pytest", JobState.SUCCEEDED, result=result)
    with a.sessions() as s:
        return jobs.get(s, job.id)


def audited(a: Archive, action: str) -> list[str]:
    with a.sessions() as s:
        return sorted(s.scalars(select(AuditEvent.study_uid).where(AuditEvent.action == action)))


def test_rules_select_by_age_patient_age_modality_sop_class_and_source_ae(
    archive: Archive, child_cr: Path
) -> None:
    assert planned(archive) == {}
    add_rule(archive, name="adults", keep_days=days_since(dt.date(2024, 12, 1)), min_patient_age=18)
    assert set(planned(archive)) == {study_uid(MR), study_uid(CR), study_uid(CT)}

    add_rule(
        archive,
        name="children-from-barneklinikk",
        modalities=["cr"],
        source_aes=["BARNEKLINIKK"],
        keep_days=days_since(dt.date(2021, 1, 1)),
    )
    add_rule(archive, name="us", sop_classes=[US_CLASS], keep_days=days_since(dt.date(2025, 1, 1)))
    add_rule(archive, name="off", keep_days=1, enabled=False)
    with pytest.raises(retention.RetentionError, match="exists already"):
        add_rule(archive, name="off", keep_days=2)
    plan = planned(archive)
    assert set(plan) == {study_uid(p) for p in (MR, CR, CT, child_cr)}  # US is from 2025-01-15

    with archive.sessions() as s:
        sizes = dict(
            s.execute(
                select(Study.study_uid, func.sum(Instance.size))
                .join(Study.series)
                .join(Series.instances)
                .group_by(Study.study_uid)
            ).all()
        )
    ct = plan[study_uid(CT)]
    assert (ct["instances"], ct["bytes"], ct["whole_study"]) == (12, sizes[study_uid(CT)], True)
    assert ct["reasons"] == ["retention rule 'adults'"]

    from storage import holds

    with archive.sessions() as s, s.begin():
        holds.hold(s, study_uid(CT), "Klagesak 2026/17", actor="t", source="t")
    assert study_uid(CT) not in planned(archive)


def test_sweep_resumes_after_a_crash_between_rows_and_objects(archive: Archive) -> None:
    add_rule(archive, name="old", keep_days=days_since(dt.date(2024, 12, 1)), min_patient_age=18)
    doomed = planned(archive)
    keys = {s: sorted(archive.store.keys(s)) for s in doomed}
    real_delete = archive.store.delete
    calls = 0

    def dies_once(key: str) -> None:  # the process "dies" after the first study's rows went
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ObjectStoreError("connection reset")
        real_delete(key)

    archive.store.delete = dies_once  # type: ignore[method-assign]
    failed = run_sweep(archive)
    assert failed.state == JobState.FAILED and failed.done == 1
    with archive.sessions() as s:
        gone = set(doomed) - set(s.scalars(select(Study.study_uid)))
        (first,) = gone  # its rows went at once; its objects wait in the outbox
        assert s.scalar(select(func.count(PendingDeletion.id))) == len(keys[first])
    assert sorted(archive.store.keys(first)) == keys[first]

    with archive.sessions() as s, s.begin():
        jobs.retry(s, failed.id, by="t")
    done = run_sweep(archive, failed.id)
    assert done.state == JobState.SUCCEEDED, done.message
    assert json.loads(done.result)["studies"] == len(doomed)  # both runs together
    assert all(list(archive.store.keys(s)) == [] for s in doomed)
    assert audited(archive, "retention-delete") == sorted(doomed)  # once each
    with archive.sessions() as s:
        assert s.scalar(select(func.count(PendingDeletion.id))) == 0


def test_rejected_instances_go_after_the_grace_period_and_the_note_stays(
    archive: Archive,
) -> None:
    ct = sorted((SAMPLES / CT).glob("*.dcm"))
    series1 = [str(dcmread(p).SOPInstanceUID) for p in ct if "-s1-" in p.name]
    recent = str(dcmread(ct[2]).SOPInstanceUID)
    note = "1.2.826.0.1.3680043.10.1432.777"
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
    with archive.sessions() as s, s.begin():
        for sop in series1:
            s.add(Rejection(sop_uid=sop, by_sop_uid=note, code="113001", created_at=old))
        s.add(
            Rejection(
                sop_uid=recent,
                by_sop_uid=note,
                code="113038",
                meaning="Incorrect Modality Worklist Entry",
            )
        )
    plan = planned(archive)
    assert list(plan) == [study_uid(CT)]
    assert (plan[study_uid(CT)]["instances"], plan[study_uid(CT)]["whole_study"]) == (2, False)

    assert run_sweep(archive).state == JobState.SUCCEEDED
    with archive.sessions() as s:
        left = set(s.scalars(select(Instance.sop_uid)))
        assert not left & set(series1) and recent in left
        assert s.scalar(select(func.count(Series.id))) == 5 + 4  # series 1 of the CT went
        assert s.scalar(select(func.count(Rejection.id))) == 3  # re-sent copies stay rejected
    assert audited(archive, "rejection-delete") == [study_uid(CT)]


def test_a_spool_replay_does_not_bring_back_what_was_deleted_but_a_resend_does(
    archive: Archive,
) -> None:
    mr = sorted((SAMPLES / MR).glob("*.dcm"))
    add_rule(archive, name="mr", modalities=["MR"], keep_years=1)
    received = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    assert run_sweep(archive).state == JobState.SUCCEEDED

    def again(when: dt.datetime) -> list[Outcome]:
        items = []
        for p in mr:
            data = p.read_bytes()
            h, sha = parse(data), sha256_of(data)
            archive.store.put(object_key(h, sha), data)
            items.append(Archived(h, object_key(h, sha), len(data), sha, "STORESCU", when))
        with archive.sessions() as s, s.begin():
            return file_instances(s, items)

    assert again(received) == [Outcome.DUPLICATE] * 3  # the reception before the deletion
    removal.purge(archive.sessions, archive.store)
    assert list(archive.store.keys(study_uid(MR))) == []
    assert again(dt.datetime.now(dt.UTC)) == [Outcome.STORED] * 3  # sent again afterwards
    assert len(list(archive.store.keys(study_uid(MR)))) == 3


def test_purge_keeps_an_object_a_row_points_at_again(archive: Archive) -> None:
    with archive.sessions() as s, s.begin():
        inst = s.scalars(select(Instance)).first()
        assert inst is not None
        key = inst.object_key
        s.add(PendingDeletion(object_key=key))
    assert removal.purge(archive.sessions, archive.store) == 0
    assert archive.store.exists(key)


# --- end to end: broker, MinIO, CLI, kill -9 ---------------------------------------------


def send(b: Broker, files: list[Path]) -> None:
    """C-STORE with storescu, one association per transfer syntax (it proposes one at a time)."""
    groups: dict[str, list[Path]] = {}
    for p in files:
        groups.setdefault(str(read_file_meta_info(p).TransferSyntaxUID), []).append(p)
    for ts, group in groups.items():
        r = storescu(b.dicom_port, group, ts)
        assert r.returncode == 0, r.stderr
    wait_instances(b, len(files))


def bucket(m: MinioServer) -> set[str]:
    client = Minio(f"127.0.0.1:{m.port}", m.access, m.secret, secure=False)
    return {
        o.object_name for o in client.list_objects("pacs-test", recursive=True) if o.object_name
    }


def index(b: Broker) -> Archive:
    return Archive(b.settings())


def cli(b: Broker, *args: str, ok: bool = True) -> str:
    r = b.cli(*args)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r.stdout


def consistent(b: Broker, m: MinioServer) -> set[str]:
    """Every indexed object is in MinIO; every other object waits in the outbox. Returns the
    study UIDs the index holds."""
    a = index(b)
    try:
        with a.sessions() as s:
            rows = set(s.scalars(select(Instance.object_key)))
            outbox = set(s.scalars(select(PendingDeletion.object_key)))
            studies = set(s.scalars(select(Study.study_uid)))
    finally:
        a.close()
    objects = bucket(m)
    assert rows <= objects, "an index row points at a deleted object"
    assert objects - rows <= outbox, "an object nobody will delete"
    return studies


def test_dry_run_then_sweep_deletes_from_index_and_minio_but_not_held(
    broker_factory, minio: MinioServer, child_cr: Path
) -> None:
    b = broker_factory({**minio.env(), **QUIET}).start()
    files = sorted(SAMPLES.rglob("*.dcm")) + sorted(child_cr.glob("*.dcm"))
    send(b, files)
    mr, cr, ct, us, child = (study_uid(p) for p in (MR, CR, CT, US, child_cr))
    before = bucket(minio)

    cli(
        b,
        "retention",
        "add",
        "--name",
        "adults-2y",
        "--keep-days",
        str(days_since(dt.date(2024, 12, 1))),
        "--min-patient-age",
        "18",
    )
    cli(b, "hold", cr, "--reason", "Klagesak 2026/123")
    (held,) = json.loads(cli(b, "holds", "--json"))
    assert (held["study_uid"], held["reason"]) == (cr, "Klagesak 2026/123")
    assert "adults-2y" in cli(b, "retention", "rules")
    plan = json.loads(cli(b, "retention", "dry-run", "--json"))
    assert {s["study_uid"] for s in plan["studies"]} == {mr, ct}
    assert plan["total_instances"] == 3 + 12
    assert before == bucket(minio), "a dry run deletes nothing"

    job = json.loads(cli(b, "retention", "sweep", "--wait", "--json"))
    assert job["state"] == "succeeded" and job["result"]["studies"] == 2

    assert consistent(b, minio) == {cr, us, child}
    left = bucket(minio)
    assert not any(k.startswith((mr, ct)) for k in left)
    assert {k.split("/")[0] for k in left} == {cr, us, child}
    answer = findscu(b.dicom_port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert {str(d.StudyInstanceUID) for d in answer} == {cr, us, child}
    a = index(b)
    try:
        with a.sessions() as s:
            events = s.execute(
                select(AuditEvent.action, AuditEvent.study_uid, AuditEvent.patient_id).where(
                    AuditEvent.action.in_(["retention-delete", "legal-hold-set"])
                )
            ).all()
    finally:
        a.close()
    pid = {mr: "29878703330", ct: "12846101282", cr: "03914802244"}
    assert sorted(tuple(e) for e in events) == sorted(
        [
            ("retention-delete", mr, pid[mr]),
            ("retention-delete", ct, pid[ct]),
            ("legal-hold-set", cr, pid[cr]),
        ]
    )

    cli(b, "unhold", cr)
    assert "no legal holds" in cli(b, "holds")
    plan = json.loads(cli(b, "retention", "dry-run", "--json"))
    assert [s["study_uid"] for s in plan["studies"]] == [cr]


def job_row(b: Broker, job_id: int) -> Job:
    a = index(b)
    try:
        with a.sessions() as s:
            return jobs.get(s, job_id)
    finally:
        a.close()


def test_kill9_during_a_sweep_then_restart_finishes_it_once(
    broker_factory, minio: MinioServer, tmp_path: Path
) -> None:
    large_ct(tmp_path / "old", 2, 32, 8)  # eight 2020 studies of two images
    files = sorted((tmp_path / "old").rglob("*.dcm"))
    env = {
        **minio.env(),
        **QUIET,
        "PACSBROKER_RETENTION_PAUSE": "0.7",
        "PACSBROKER_JOB_LEASE": "3",
    }
    b = broker_factory(env).start()
    send(b, files)
    doomed = {study_uid(d) for d in (tmp_path / "old").iterdir()}
    cli(b, "retention", "add", "--name", "old", "--keep-days", str(days_since(dt.date(2021, 1, 1))))
    job_id = json.loads(cli(b, "retention", "sweep", "--json"))["id"]

    deadline = time.time() + 60
    while job_row(b, job_id).done < 3:
        assert time.time() < deadline, b.log.read_text()[-2000:]
        time.sleep(0.05)
    b.kill9()
    stopped = job_row(b, job_id)
    assert stopped.state == JobState.RUNNING and 3 <= stopped.done < 8
    left = consistent(b, minio)
    assert len(left) == 8 - stopped.done

    b.start()
    deadline = time.time() + 90
    while (j := job_row(b, job_id)).state != JobState.SUCCEEDED:
        assert j.state == JobState.RUNNING or j.state == JobState.QUEUED, j.message
        assert time.time() < deadline, b.log.read_text()[-2000:]
        time.sleep(0.2)
    assert j.attempts == 2 and j.done == 8
    assert consistent(b, minio) == set()
    assert bucket(minio) == set()
    a = index(b)
    try:
        with a.sessions() as s:
            deleted = list(
                s.scalars(
                    select(AuditEvent.study_uid).where(AuditEvent.action == "retention-delete")
                )
            )
    finally:
        a.close()
    assert sorted(deleted) == sorted(doomed)  # each study deleted exactly once


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fixity_finds_an_object_altered_or_lost_in_minio(
    broker_factory, minio: MinioServer
) -> None:
    b = broker_factory({**minio.env(), **QUIET}).start()
    files = sorted(SAMPLES.rglob("*.dcm"))
    send(b, files)
    assert (
        json.loads(cli(b, "fixity", "--sample", "1", "--wait", "--json"))["result"]["failed"] == 0
    )

    a = index(b)
    with a.sessions() as s:
        altered, lost = s.execute(select(Instance.sop_uid, Instance.object_key).limit(2)).all()
    a.close()
    client = Minio(f"127.0.0.1:{minio.port}", minio.access, minio.secret, secure=False)
    data = client.get_object("pacs-test", altered.object_key).read()
    tampered = data[:-1] + bytes([data[-1] ^ 0xFF])  # one bit-rotten byte
    import io

    client.put_object("pacs-test", altered.object_key, io.BytesIO(tampered), len(tampered))
    client.remove_object("pacs-test", lost.object_key)

    r = b.cli("fixity", "--sample", "1.0", "--wait", "--json")
    assert r.returncode == 1, r.stderr
    result = json.loads(r.stdout)["result"]
    assert result["checked"] == len(files) and result["failed"] == 2
    problems = {m["sop_uid"]: m["problem"] for m in result["mismatches"]}
    assert problems[altered.sop_uid] == f"SHA-256 is {sha256_of(tampered)}"
    assert problems[lost.sop_uid] == "missing"
    a = index(b)
    with a.sessions() as s:
        audits = s.execute(
            select(AuditEvent.detail, AuditEvent.outcome).where(
                AuditEvent.action == "fixity-mismatch"
            )
        ).all()
    a.close()
    assert len(audits) == 2 and {o for _, o in audits} == {"failure"}
    assert "fixity" in b.log.read_text()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_iocm_rejected_instances_leave_after_the_grace_period(
    broker_factory, minio: MinioServer, tmp_path: Path
) -> None:
    from tests.test_epr import kos

    grace = 6.0
    env = {**minio.env(), **QUIET, "PACSBROKER_REJECTION_GRACE_DAYS": str(grace / 86400)}
    b = broker_factory(env).start()
    ct = sorted((SAMPLES / CT).glob("*.dcm"))
    send(b, ct)
    note = kos(ct[:2], codes.DCM.RejectedForQualityReasons, tmp_path / "rej.dcm")
    assert storescu(b.dicom_port, [note]).returncode == 0
    wait_instances(b, len(ct) + 1)
    noted = time.time()
    rejected = {str(dcmread(p).SOPInstanceUID) for p in ct[:2]}

    job = json.loads(cli(b, "retention", "sweep", "--wait", "--json"))
    assert job["result"]["studies"] == 0, "within the grace period nothing goes"
    time.sleep(max(0.0, noted + grace + 0.5 - time.time()))
    job = json.loads(cli(b, "retention", "sweep", "--wait", "--json"))
    assert job["result"] == {"studies": 1, "instances": 2, "bytes": job["result"]["bytes"]}

    a = index(b)
    with a.sessions() as s:
        left = set(s.scalars(select(Instance.sop_uid)))
    a.close()
    assert not left & rejected
    assert str(dcmread(note).SOPInstanceUID) in left  # the note itself is kept
    assert len(left) == len(ct) - 2 + 1
    objects = bucket(minio)
    assert not any(f"/{sop}." in k for k in objects for sop in rejected)
    assert len(objects) == len(ct) - 2 + 1
    consistent(b, minio)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_admin_api_for_rules_holds_sweeps_jobs_and_fixity(broker_factory) -> None:
    b = broker_factory(QUIET).start()
    files = sorted(SAMPLES.rglob("*.dcm"))
    send(b, files)

    def client(role: str) -> httpx.Client:
        tok = b.cli("token", "--user", "rad-admin", "--role", role).stdout.strip()
        return httpx.Client(
            base_url=f"http://127.0.0.1:{b.http_port}/api/v1/admin",
            headers={"Authorization": f"Bearer {tok}"},
            timeout=30,
        )

    with client("clinician") as nope:
        assert nope.get("/jobs").status_code == 403
        assert nope.post("/retention/sweep").status_code == 403

    with client("radiology-admin") as api:
        rule = {"name": "mr", "modalities": ["MR"], "keep_years": 1}
        r = api.post("/retention/rules", json=rule)
        assert r.status_code == 201, r.text
        rule_id = r.json()["id"]
        assert api.post("/retention/rules", json=rule).status_code == 409
        assert api.post("/retention/rules", json={"name": "x"}).status_code == 422
        assert api.put("/retention/rules/999", json=rule).status_code == 404
        assert [x["name"] for x in api.get("/retention/rules").json()] == ["mr"]
        plan = api.get("/retention/dry-run").json()
        assert [s["study_uid"] for s in plan["studies"]] == [study_uid(MR)]

        assert (
            api.put(f"/studies/{study_uid(MR)}/hold", json={"reason": "tilsyn"}).status_code == 200
        )
        assert api.put("/studies/1.2.3/hold", json={"reason": "x"}).status_code == 404
        assert [h["study_uid"] for h in api.get("/holds").json()] == [study_uid(MR)]
        assert api.get("/retention/dry-run").json()["studies"] == []
        assert api.delete(f"/studies/{study_uid(MR)}/hold").status_code == 204
        assert api.delete(f"/studies/{study_uid(MR)}/hold").status_code == 404

        r = api.put(f"/retention/rules/{rule_id}", json={**rule, "keep_years": 50})
        assert r.json()["keep_years"] == 50
        assert api.get("/retention/dry-run").json()["total_studies"] == 0
        assert api.delete(f"/retention/rules/{rule_id}").status_code == 204

        sweep = api.post("/retention/sweep")
        assert sweep.status_code == 202 and sweep.json()["kind"] == "retention-sweep"
        fix = api.post("/fixity", json={"sample": 1.0}).json()
        deadline = time.time() + 60
        while api.get(f"/jobs/{fix['id']}").json()["state"] != "succeeded":
            assert time.time() < deadline
            time.sleep(0.2)
        assert api.get(f"/jobs/{fix['id']}").json()["result"]["checked"] == len(files)
        assert {j["id"] for j in api.get("/jobs").json()} >= {sweep.json()["id"], fix["id"]}
        assert api.post(f"/jobs/{fix['id']}/cancel").status_code == 409
        assert api.post(f"/jobs/{fix['id']}/retry").status_code == 409
        assert api.get("/jobs/999999").status_code == 404

    out = cli(b, "jobs", "list")
    assert "fixity" in out and "succeeded" in out
