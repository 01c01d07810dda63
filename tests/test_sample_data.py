"""The committed sample set and its generator make valid DICOM with valid synthetic IDs."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from sample_dicom.generate import sample_set
from storage import nationalid
from tests.conftest import SAMPLES
from tests.dciodvfy import errors


def test_committed_sample_set_passes_dciodvfy() -> None:
    files = sorted(SAMPLES.rglob("*.dcm"))
    assert len(files) >= 15
    assert {str(p): errors(p) for p in files} == {str(p): [] for p in files}


def test_generator_reproduces_the_committed_set(tmp_path: Path) -> None:
    sample_set(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.dcm"))
    assert made == sorted(p.relative_to(SAMPLES) for p in SAMPLES.rglob("*.dcm"))
    for rel in made:
        ds = dcmread(tmp_path / rel)
        assert ds == dcmread(SAMPLES / rel)
        assert nationalid.parse(str(ds.PatientID), allow_synthetic=True).synthetic
