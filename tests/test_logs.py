"""What the broker's logs say when an object cannot be handled."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from broker.logs import setup_logging
from storage import transcode


@pytest.fixture
def broker_logging(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The serve command's logging, with pytest's capture kept, undone afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("INFO", "test")
    root.addHandler(caplog.handler)  # basicConfig(force=True) removed it
    yield caplog
    root.handlers[:], root.level = handlers, level


def test_an_undecodable_image_is_one_error_line_naming_the_object(
    broker_logging: pytest.LogCaptureFixture,
) -> None:
    ds = dcmread(get_testdata_file("JPEG-lossy.dcm"))  # 12-bit JPEG no decoder here reads
    transcode.fit(ds, ["1.2.840.10008.1.2.1"])
    errors = [r for r in broker_logging.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["pacsbroker.retrieve"]
    assert str(ds.SOPInstanceUID) in errors[0].getMessage() and errors[0].exc_info is None
