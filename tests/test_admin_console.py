"""The admin console against one real broker (SQLite): the peers and audit-log APIs, the cookie
login and its limits, and the pages in headless Chromium showing rules, jobs and quarantine."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from storage import jobs
from storage.archive import Archive
from storage.models import AuditEvent
from tests.conftest import PACSBROKER, SAMPLES, Broker, free_port
from tests.dcmtk import storescu
from tests.test_browser import browser  # noqa: F401  (the headless Chromium fixture)
from tests.test_dimse import storescp, wait_instances
from viewer.auth import issue_token, signing_key

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

BAD_NATIONAL_ID = "12345678901"  # 11 digits, wrong check digits: quarantined on arrival
PEERS = [
    {"ae": "STORESCU"},
    {"ae": "WARD-WS", "host": "10.1.2.3", "port": 4242, "store": False, "retrieve": False},
]
QUIET = {"PACSBROKER_RETENTION_SWEEP_HOURS": "0", "PACSBROKER_FIXITY_HOURS": "0"}
SECRET = "pas-token-never-shown"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the module, holding one quarantined and one ordinary study."""
    tmp = tmp_path_factory.mktemp("console")
    b = Broker(
        tmp / "broker",
        {"PACSBROKER_PEERS": json.dumps(PEERS), "PACSBROKER_PAS_TOKEN": SECRET, **QUIET},
    ).start()
    try:
        bad = []
        for src in sorted((SAMPLES / "kari-ct").glob("ct-s2-*.dcm")):
            ds = dcmread(src)
            ds.PatientID = BAD_NATIONAL_ID
            ds.save_as(tmp / src.name)
            bad.append(tmp / src.name)
        ordinary = sorted((SAMPLES / "ola-cr").glob("*.dcm"))
        assert storescu(b.dicom_port, [*bad, *ordinary]).returncode == 0
        wait_instances(b, len(bad) + len(ordinary))
        yield b
    finally:
        b.stop()


def client(b: Broker, user: str = "rita", role: str = "radiology-admin") -> httpx.Client:
    tok = issue_token(signing_key(b.data_dir), user, role)  # as `pacsbroker token`, sooner
    return httpx.Client(
        base_url=f"http://127.0.0.1:{b.http_port}/api/v1/admin",
        headers={"Authorization": f"Bearer {tok}"},
        timeout=30,
    )


def wait_job(api: httpx.Client, job_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def test_peers_show_the_configuration_without_secrets(broker: Broker) -> None:
    with client(broker) as api:
        p = api.get("/peers").json()
    assert p["ae_title"] == "PACSBROKER" and p["dicom_port"] == broker.dicom_port
    assert p["unknown_aes_refused"] is True  # PEERS is set and LOOPBACK_OPEN is not
    assert p["peers"][1] == {
        "ae": "WARD-WS",
        "host": "10.1.2.3",
        "port": 4242,
        "store": False,
        "query": True,
        "retrieve": False,
    }
    assert SECRET not in json.dumps(p)


def test_peers_cli_echoes_each_peer(broker: Broker, tmp_path: Path) -> None:
    scp_port, closed = free_port(), free_port()
    peers = [{"ae": "STORESCP", "port": scp_port}, {"ae": "GONE", "port": closed, "store": False}]
    env = {**broker.env, "PACSBROKER_PEERS": json.dumps(peers)}
    scp = storescp(scp_port, tmp_path)
    try:
        run = subprocess.run(
            [str(PACSBROKER), "peers", "--echo", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        scp.terminate()
        scp.wait(10)
    assert run.returncode == 1  # one peer does not answer
    shown = {p["ae"]: p for p in json.loads(run.stdout)["peers"]}
    assert shown["STORESCP"]["echo"].startswith("ok (")
    assert shown["GONE"]["echo"].startswith("no answer at 127.0.0.1") and not shown["GONE"]["store"]
    listing = broker.cli("peers")
    assert listing.returncode == 0 and "unknown AE titles refused" in listing.stdout
    assert "WARD-WS          10.1.2.3:4242   may query" in listing.stdout


def test_audit_cli_filters_and_is_audited(broker: Broker) -> None:
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    r = broker.cli("audit", "--since", tomorrow)
    assert r.returncode == 0 and "no audit events match" in r.stderr
    r = broker.cli("audit", "--since", "last tuesday")
    assert r.returncode == 2 and "not an ISO 8601 date" in r.stderr
    r = broker.cli("audit", "--user", "cli:*", "--action", "audit-read", "--json")
    events = json.loads(r.stdout)["events"]
    assert r.returncode == 0 and events[0]["detail"] == f"since={tomorrow}"
    assert events[0]["role"] == "radiology-admin" and events[0]["source"].startswith("cli@")


def test_audit_log_filters_and_its_own_reading_is_audited(broker: Broker) -> None:
    ola = str(dcmread(next((SAMPLES / "ola-cr").glob("*.dcm"))).PatientID)
    study = str(dcmread(next((SAMPLES / "ola-cr").glob("*.dcm"))).StudyInstanceUID)
    rule = {"name": "audit-test", "modalities": ["US"], "keep_years": 30}
    with client(broker, "alice") as alice, client(broker, "bob") as bob:
        assert alice.post("/retention/rules", json=rule).status_code == 201
        assert bob.put(f"/studies/{study}/hold", json={"reason": "case 7"}).status_code == 200
        assert bob.delete(f"/studies/{study}/hold").status_code == 204

    with client(broker, "auditor") as api:
        mine = api.get("/audit", params={"actor": "alice"}).json()["events"]
        assert [e["action"] for e in mine] == ["retention-rule-add"]
        assert mine[0]["role"] == "radiology-admin" and "audit-test" in mine[0]["detail"]

        of_ola = api.get("/audit", params={"patient_id": ola}).json()["events"]
        assert {e["patient_id"] for e in of_ola} == {ola}
        by_bob = [e["action"] for e in of_ola if e["actor"] == "bob"]
        assert by_bob == ["legal-hold-clear", "legal-hold-set"]  # newest first

        prefixed = api.get("/audit", params={"action": "legal-hold*"}).json()["events"]
        assert len(prefixed) == 2 and all(e["action"].startswith("legal-hold") for e in prefixed)
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
        assert api.get("/audit", params={"since": tomorrow}).json()["events"] == []
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert api.get("/audit", params={"since": today, "actor": "bob"}).json()["events"]
        assert api.get("/audit", params={"since": "last tuesday"}).status_code == 422

        first = api.get("/audit", params={"limit": 2}).json()
        assert first["more"] and len(first["events"]) == 2
        older = first["events"][-1]["id"]
        second = api.get("/audit", params={"limit": 2, "before_id": older}).json()["events"]
        events = first["events"] + second
        assert [e["id"] for e in events] == sorted({e["id"] for e in events}, reverse=True)
        assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
        one, two = (
            api.get("/audit", params={"actor": "bob", "limit": 1, "offset": n}).json()["events"]
            for n in (0, 1)
        )
        assert [one[0]["action"], two[0]["action"]] == by_bob

        reads = api.get("/audit", params={"actor": "auditor", "action": "audit-read"}).json()
        details = [e["detail"] for e in reads["events"]]
        assert "actor=alice" in details and f"patient_id={ola}" in details
        read_of_ola = api.get("/audit", params={"patient_id": ola, "action": "audit-read"})
        assert read_of_ola.json()["events"][0]["actor"] == "auditor"


def test_admin_api_needs_an_admin(broker: Broker) -> None:
    base = f"http://127.0.0.1:{broker.http_port}"
    for path in ("/api/v1/admin/peers", "/api/v1/admin/audit"):
        r = httpx.get(base + path)
        assert r.status_code == 401 and r.json()["detail"] == "a bearer token is required"
        with client(broker, "dr", "clinician") as clinician:
            r = clinician.get(path.removeprefix("/api/v1/admin"))
        assert r.status_code == 403 and "radiology-admin" in r.json()["detail"]
    r = httpx.get(base + "/admin")
    assert r.status_code == 401 and 'name="token"' in r.text and "/api/" not in r.text


def test_cookie_login_and_its_limits(broker: Broker) -> None:
    base = f"http://127.0.0.1:{broker.http_port}"
    clinical = issue_token(signing_key(broker.data_dir), "dr", "clinician")
    r = httpx.post(f"{base}/admin/login", data={"token": clinical, "lang": "en"})
    assert r.status_code == 403 and "radiology-admin" in r.text and not r.cookies
    r = httpx.get(f"{base}/admin/login", params={"token": clinical[:-4] + "AAAA"})
    assert r.status_code == 401 and "ugyldig" in r.text and not r.cookies

    url = broker.cli("admin-url", "--user", "rita", "--ttl", "300").stdout.strip()
    r = httpx.get(url)
    assert r.status_code == 303 and r.headers["location"].endswith("/admin?lang=nb")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    max_age = re.search(r"Max-Age=(\d+)", cookie)
    assert max_age and 290 <= int(max_age.group(1)) <= 300  # the cookie dies with the token

    with httpx.Client(base_url=base, cookies=r.cookies) as browserish:
        page = browserish.get("/admin?lang=en")
        assert page.status_code == 200 and "Signed in as" in page.text and "rita" in page.text
        assert browserish.get("/api/v1/admin/peers").status_code == 200
        # a change with the cookie alone could come from another port of this host
        r = browserish.post("/api/v1/admin/fixity", json={"sample": 1})
        assert r.status_code == 403 and "X-Pacs-Console" in r.json()["detail"]
        r = browserish.post(
            "/api/v1/admin/fixity", json={"sample": 1}, headers={"X-Pacs-Console": "1"}
        )
        assert r.status_code == 202 and r.json()["created_by"] == "rita"
        out = browserish.post("/admin/logout")
        assert out.status_code == 303 and 'pacsbroker_admin=""' in out.headers["set-cookie"]


@pytest.mark.timeout(180)
def test_admin_pages_in_chromium(broker: Broker, browser: WebDriver) -> None:  # noqa: F811
    with client(broker) as api:
        rule = {"name": "CR etter 10 år", "modalities": ["CR"], "keep_years": 10}
        assert api.post("/retention/rules", json=rule).status_code == 201
        pre = {"name": "CT-forhistorikk", "modalities": ["CT"], "years": 3, "max_studies": 2}
        assert api.post("/prefetch/rules", json=pre).status_code == 201
        job = api.post("/fixity", json={"sample": 1.0}).json()
        assert wait_job(api, job["id"])["state"] == "succeeded"

    # a tab re-renders its tables after every change: look elements up again when they go stale
    wait = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])

    def tab(name: str, expect: str) -> str:
        browser.find_element(By.CSS_SELECTOR, f'#tabs a[href="#{name}"]').click()
        section = browser.find_element(By.ID, name)
        wait.until(lambda d: expect in section.text)
        return section.text

    browser.get(broker.cli("admin-url", "--user", "rita").stdout.strip())
    wait.until(lambda d: d.find_element(By.ID, "user").text == "rita")
    assert browser.current_url.endswith("/admin?lang=nb") and "token" not in browser.current_url
    assert "WARD-WS" in tab("peers", "10.1.2.3")

    text = tab("quarantine", BAD_NATIONAL_ID)
    assert "invalid national ID" in text and "Knytt til" in text
    ola = str(dcmread(next((SAMPLES / "ola-cr").glob("*.dcm"))).PatientID)
    browser.find_element(By.CSS_SELECTOR, "#quarantine-studies input").send_keys(ola)
    browser.find_element(By.XPATH, "//button[text()='Knytt til']").click()
    wait.until(lambda d: "knyttet til pasienten" in d.find_element(By.ID, "status").text)
    wait.until(lambda d: "Ingenting i karantene" in d.find_element(By.ID, "quarantine").text)

    assert "CR etter 10 år" in tab("retention", "CR etter 10 år")
    browser.find_element(By.ID, "dry-run").click()
    wait.until(lambda d: "blir frigjort" in d.find_element(By.ID, "dry-run-result").text)
    wait.until(
        lambda d: (
            d.find_element(By.XPATH, "//td[text()='CR etter 10 år']/..//button").click() or True
        )
    )
    browser.switch_to.alert.accept()
    wait.until(lambda d: "CR etter 10 år" not in d.find_element(By.ID, "retention-rules").text)

    assert "CT-forhistorikk" in tab("prefetch", "CT-forhistorikk")
    form = browser.find_element(By.ID, "prefetch-add")
    form.find_element(By.NAME, "name").send_keys("MR hode")
    form.find_element(By.NAME, "modalities").send_keys("mr, CT")
    form.find_element(By.NAME, "body_part").send_keys("HEAD")
    form.find_element(By.NAME, "on_admission").click()
    form.find_element(By.TAG_NAME, "button").click()
    wait.until(lambda d: "MR hode" in d.find_element(By.ID, "prefetch-rules").text)

    with client(broker) as api:
        assert api.get("/quarantine").json()["studies"] == []
        assert "CR etter 10 år" not in {r["name"] for r in api.get("/retention/rules").json()}
        (added,) = [r for r in api.get("/prefetch/rules").json() if r["name"] == "MR hode"]
    assert added["modalities"] == ["CT", "MR"] and added["body_part"] == "HEAD"
    assert added["on_admission"] and added["on_order"] and added["max_studies"] == 3

    tab("jobs", f"#{job['id']}")

    # the jobs table refreshes itself: read the row in one go, again if it was just replaced
    def job_row(d: WebDriver) -> tuple[str, str | None, str | None]:
        row = d.find_element(By.XPATH, f"//td[text()='#{job['id']}']/..")
        bar = row.find_element(By.TAG_NAME, "progress")
        return row.text, bar.get_attribute("value"), bar.get_attribute("max")

    text, done, total = wait.until(job_row)
    assert "fixity" in text and "ferdig" in text
    assert done == total != "0"
    browser.find_element(By.ID, "fixity").click()  # the page starts a job and lists it
    wait.until(lambda d: "er lagt i kø" in d.find_element(By.ID, "status").text)
    newer = int(browser.find_element(By.ID, "status").text.split("#")[1].split()[0])
    wait.until(lambda d: f"#{newer}" in d.find_element(By.ID, "jobs-table").text)

    assert "CT" in tab("storage", "CR")
    assert "retention-rule-add" in tab("audit", "retention-rule-add")

    browser.get(f"http://127.0.0.1:{broker.http_port}/admin?lang=en#jobs")
    wait.until(
        lambda d: (
            "Start fixity check" in d.page_source
            and "#" in d.find_element(By.ID, "jobs-table").text
        )
    )


def test_console_page_takes_a_bearer_token(broker: Broker) -> None:
    url = f"http://127.0.0.1:{broker.http_port}/admin"
    key = signing_key(broker.data_dir)

    def page(token: str) -> httpx.Response:
        return httpx.get(url, params={"lang": "en"}, headers={"Authorization": f"Bearer {token}"})

    admin = page(issue_token(key, "rita", "radiology-admin"))
    assert admin.status_code == 200 and "Signed in as" in admin.text and "rita" in admin.text
    clinician = page(issue_token(key, "dr", "clinician"))
    assert clinician.status_code == 403 and "radiology-admin" in clinician.text
    forged = page(issue_token(key, "rita", "radiology-admin")[:-4] + "AAAA")
    assert forged.status_code == 401 and "Signed in as" not in forged.text


def _audited(b: Broker, actor: str) -> list[tuple[str, str, str]]:
    """(action, detail, patient ID) of the actor's audit events, oldest first."""
    archive = Archive(b.settings())
    try:
        with archive.sessions() as session:
            rows = session.scalars(
                select(AuditEvent).where(AuditEvent.actor == actor).order_by(AuditEvent.id)
            ).all()
            return [(e.action, e.detail, e.patient_id) for e in rows]
    finally:
        archive.close()


def test_job_and_prefetch_rule_changes_are_audited(broker: Broker) -> None:
    archive = Archive(broker.settings())
    try:
        with archive.sessions() as session, session.begin():
            # a kind no runner handles: it stays queued until cancelled
            job = jobs.enqueue(session, "audit-probe", created_by="test")
            assert job is not None
            job_id = job.id
    finally:
        archive.close()
    with client(broker, "jonas") as api:
        assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert api.post(f"/jobs/{job_id}/retry").status_code == 200
        rule = {"name": "audit-prefetch", "modalities": ["CT"], "years": 2}
        added = api.post("/prefetch/rules", json=rule).json()
        path = f"/prefetch/rules/{added['id']}"
        assert api.put(path, json={**rule, "years": 4}).status_code == 200
        assert api.delete(path).status_code == 204
    assert broker.cli("jobs", "cancel", str(job_id)).returncode == 0
    assert broker.cli("jobs", "retry", str(job_id)).returncode == 0
    assert broker.cli("jobs", "cancel", str(job_id)).returncode == 0

    probe = f"job {job_id} (audit-probe)"
    actions = [(a, d) for a, d, _ in _audited(broker, "jonas")]
    assert actions[:2] == [("job-cancel", probe), ("job-retry", probe)]
    assert [a for a, _ in actions[2:]] == [
        "prefetch-rule-add",
        "prefetch-rule-update",
        "prefetch-rule-delete",
    ]
    assert '"years":4' in actions[3][1] and "audit-prefetch" in actions[4][1]
    added = broker.cli("prefetch-rules", "add", "cli-prefetch", "--modality", "MR")
    rule_id = added.stderr.split()[2]
    assert broker.cli("prefetch-rules", "delete", rule_id).returncode == 0
    cli = [(a, d) for a, d, _ in _audited(broker, f"cli:{getpass.getuser()}")]
    assert [x for x in cli if x[1] == probe] == [
        ("job-cancel", probe),
        ("job-retry", probe),
        ("job-cancel", probe),
    ]
    assert [a for a, d in cli if "cli-prefetch" in d or d == f"rule {rule_id}"] == [
        "prefetch-rule-add",
        "prefetch-rule-delete",
    ]


def test_manual_prefetch_is_audited(broker_factory: Any, tmp_path: Path) -> None:
    b = broker_factory({"PACSBROKER_NEAR_DIR": str(tmp_path / "near"), **QUIET}).start()
    ola = sorted((SAMPLES / "ola-cr").glob("*.dcm"))
    assert storescu(b.dicom_port, ola).returncode == 0
    wait_instances(b, len(ola))
    first = dcmread(ola[0])
    with client(b, "jonas") as api:
        r = api.post("/prefetch", json={"patient_id": str(first.PatientID)})
        assert r.status_code == 202, r.text
    (event,) = _audited(b, "jonas")
    assert event == ("prefetch-start", f"job {r.json()['id']}: 1 studies", str(first.PatientID))


def test_api_description_needs_a_token(broker: Broker) -> None:
    base = f"http://127.0.0.1:{broker.http_port}"
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(base + path).status_code == 401
    assert httpx.get(base + "/redoc").status_code == 404
    tok = issue_token(signing_key(broker.data_dir), "dr", "clinician")
    auth = {"Authorization": f"Bearer {tok}"}
    schema = httpx.get(base + "/openapi.json", headers=auth)
    assert schema.status_code == 200 and "/epj/v1/links" in schema.json()["paths"]
    docs = httpx.get(base + "/docs", headers=auth)
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # Swagger UI fetches the schema with what the browser has: the console's session cookie
    cookie = {
        "pacsbroker_admin": issue_token(signing_key(broker.data_dir), "rita", "radiology-admin")
    }
    assert httpx.get(base + "/openapi.json", cookies=cookie).status_code == 200
