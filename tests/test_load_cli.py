"""`pacsbroker load` and `pacsbroker status` against a running broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from broker.dimse.contexts import sub_operation_contexts
from broker.loader import MAX_CONTEXTS, association_groups, dicom_files
from sample_dicom.generate import large_ct
from tests.conftest import SAMPLES, Broker


def _status(b: Broker) -> dict[str, object]:
    r = b.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_load_sends_every_sample_and_status_shows_no_backlog(broker_factory) -> None:
    files = list(dicom_files(SAMPLES))
    assert len({ts for _, _, ts in files}) > 1, "the samples mix transfer syntaxes"
    b = broker_factory({}).start()
    r = b.cli("load", str(SAMPLES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"sent {len(files)} of {len(files)} files" in r.stdout + r.stderr
    deadline = time.time() + 60
    status = _status(b)
    while time.time() < deadline and (
        status["archive"]["instances"] < len(files) or status["spool_backlog"]  # type: ignore[index]
    ):
        time.sleep(0.5)
        status = _status(b)
    assert status["archive"]["instances"] == len(files)  # type: ignore[index]
    # the receivers' segments are still open (not sealed), yet all they hold is ingested
    assert status["spool_backlog"] == 0
    assert list((b.data_dir / "spool").rglob("*.seg"))


def test_many_classes_and_syntaxes_are_split_over_associations() -> None:
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"]
    files = [
        (Path(f"{c}-{ts}.dcm"), f"1.2.3.{c}", ts)
        for c in range(100)
        for ts in syntaxes[: c % 3 + 1]
    ]
    groups = association_groups(files)
    assert len(groups) > 1
    assert sorted(f for g in groups for f in g) == sorted(files)
    for g in groups:
        contexts = sub_operation_contexts({(c, ts) for _, c, ts in g})
        assert len(contexts) <= MAX_CONTEXTS
        offered = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in contexts}
        assert {(c, ts) for _, c, ts in g} <= offered


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_large_objects_leave_no_spool_files_once_ingested(broker_factory, tmp_path: Path) -> None:
    src = tmp_path / "large"
    large_ct(src, 3, 512, 1)  # 512 KiB of pixels each: over a quarter of a 1 MiB segment
    b = broker_factory({"PACSBROKER_SPOOL_SEGMENT_MB": "1"}).start()
    r = b.cli("load", str(src))
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.time() + 60
    while time.time() < deadline and list((b.data_dir / "spool").rglob("*.rec")):
        time.sleep(0.3)
    assert _status(b)["archive"]["instances"] == 3  # type: ignore[index]
    assert not list((b.data_dir / "spool").rglob("*.rec"))
