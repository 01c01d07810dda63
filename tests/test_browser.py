"""The clinician's pages in a real headless Chromium (Debian's chromium + chromedriver, Selenium):
an EPR link shows the key images (checked by screenshot pixels), "open full study" shows the
series and scrolling changes the image, an expired link shows an error and no image."""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.sr.codedict import codes
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from bench.data import files, one_study
from storage.archive import Archive
from storage.models import AuditEvent
from tests.conftest import Broker
from tests.dcmtk import storescu
from tests.test_dimse import wait_instances
from tests.test_epr import PATIENT, api, kos
from viewer.render import View, render

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError("chromium and chromium-driver missing: deploy/install-system.sh")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def shot(driver: WebDriver, element: WebElement) -> np.ndarray:
    """The element's pixels as the user sees them, cut from a screenshot of the window."""
    page = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("L")
    r = element.rect
    box = (round(r["x"]), round(r["y"]), round(r["x"] + r["width"]), round(r["y"] + r["height"]))
    return np.asarray(page.crop(box), dtype=float)


def loaded(driver: WebDriver, element: WebElement) -> bool:
    return bool(
        driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", element
        )
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_epr_link_pages_in_chromium(broker_factory, browser: WebDriver, tmp_path: Path) -> None:
    b: Broker = broker_factory().start()
    ct = files(one_study(tmp_path, "ct300", 40, 64))
    keys = [ct[7], ct[30]]
    note = kos(keys, codes.DCM.ForReferringProvider, tmp_path / "kos.dcm", "Funn i lever")
    assert storescu(b.dicom_port, [*ct, note]).returncode == 0
    wait_instances(b, len(ct) + 1)
    with api(b) as epj:
        url = epj.post("/links", json={"clinician": "lege-lise", "patient_id": PATIENT}).json()[
            "url"
        ]

    browser.get(url)
    WebDriverWait(browser, 20).until(
        lambda d: (
            [i for i in d.find_elements(By.CSS_SELECTOR, ".keys img") if loaded(d, i)] or False
        )
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, ".keys img")) == 2
    assert "Funn i lever" in browser.page_source
    by_sop = {str(dcmread(p).SOPInstanceUID): p for p in keys}
    for img in browser.find_elements(By.CSS_SELECTOR, ".keys img"):
        WebDriverWait(browser, 20).until(lambda d, img=img: loaded(d, img))
        seen = shot(browser, img)
        expected = np.asarray(
            Image.open(
                BytesIO(render(dcmread(by_sop[img.get_attribute("data-sop")]), View()))
            ).convert("L"),
            dtype=float,
        )
        assert seen.shape == expected.shape
        assert np.abs(seen - expected).mean() < 6  # JPEG decoded by the browser: near-equal

    browser.find_element(By.CSS_SELECTOR, "a.full").click()
    view = WebDriverWait(browser, 20).until(
        lambda d: (v := d.find_element(By.ID, "view")) and loaded(d, v) and v
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#series button")) == 1
    first_sop, before = view.get_attribute("data-sop"), shot(browser, view)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    WebDriverWait(browser, 20).until(
        lambda d: view.get_attribute("data-sop") != first_sop and loaded(d, view)
    )
    time.sleep(0.2)
    after = shot(browser, view)
    assert before.shape == after.shape and np.abs(before - after).mean() > 5
    assert "2 / 40" in browser.find_element(By.ID, "pos").text

    browser.find_element(By.ID, "mark").click()
    WebDriverWait(browser, 20).until(lambda d: "Markert" in d.find_element(By.ID, "status").text)
    marked = view.get_attribute("data-sop")
    deadline = time.time() + 30
    with api(b) as epj:
        while time.time() < deadline:
            (st,) = epj.get(f"/patients/{PATIENT}/studies").json()["studies"]
            if marked in {k["sop_uid"] for k in st["key_images"]}:
                break
            time.sleep(0.3)
    assert marked in {k["sop_uid"] for k in st["key_images"]}

    key = (b.data_dir / "keys" / "signing.key").read_bytes()
    token = url.rsplit("/", 1)[1]
    claims = jwt.decode(token, key, algorithms=["HS256"], audience="pacsbroker-epr-link")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, key, algorithm="HS256")
    browser.get(url.replace(token, expired))
    assert "utløpt" in browser.page_source
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert httpx.get(url.replace(token, expired)).status_code == 401


def short_link(b: Broker, url: str, seconds: int) -> str:
    """The link with its lifetime cut to `seconds` (the API gives at least 10 s)."""
    key = (b.data_dir / "keys" / "signing.key").read_bytes()
    token = url.rsplit("/", 1)[1]
    claims = jwt.decode(token, key, algorithms=["HS256"], audience="pacsbroker-epr-link")
    short = jwt.encode({**claims, "exp": int(time.time()) + seconds}, key, algorithm="HS256")
    return url.replace(token, short)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_study_viewer_outlives_its_link_within_the_same_scope(
    broker_factory, browser: WebDriver, tmp_path: Path
) -> None:
    b: Broker = broker_factory().start()
    ct = files(one_study(tmp_path, "ct300", 10, 64))
    other = files(one_study(tmp_path, "ct301", 2, 64))
    assert storescu(b.dicom_port, [*ct, *other]).returncode == 0
    wait_instances(b, len(ct) + len(other))
    study = str(dcmread(ct[0]).StudyInstanceUID)
    with api(b) as epj:
        url = epj.post("/links", json={"clinician": "lege-lise", "patient_id": PATIENT}).json()[
            "url"
        ]
    link = short_link(b, url, 2)
    browser.get(f"{link}/studies/{study}")
    view = WebDriverWait(browser, 20).until(
        lambda d: (v := d.find_element(By.ID, "view")) and loaded(d, v) and v
    )
    time.sleep(3)
    assert httpx.get(f"{link}/studies/{study}.json").status_code == 401  # the link is dead
    for _ in range(4):  # past the images the viewer fetched ahead while the link was valid
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    WebDriverWait(browser, 20).until(
        lambda d: "5 / 10" in d.find_element(By.ID, "pos").text and loaded(d, view)
    )
    assert view.get_attribute("data-sop") == str(dcmread(ct[4]).SOPInstanceUID)
    assert "pacsbroker_epr" not in browser.execute_script("return document.cookie")

    foreign = dcmread(other[0])
    status = browser.execute_async_script(
        "fetch(arguments[0]).then(r => arguments[1](r.status))",
        f"{link}/images/{foreign.StudyInstanceUID}/{foreign.SOPInstanceUID}",
    )
    assert status in (403, 404)
    archive = Archive(b.settings())
    try:
        with archive.sessions() as session:
            reads = session.scalars(
                select(AuditEvent.actor).where(AuditEvent.action == "epr.image")
            ).all()
    finally:
        archive.close()
    assert len(reads) >= 5 and set(reads) == {"lege-lise"}
