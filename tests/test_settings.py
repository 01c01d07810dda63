import pytest

from storage.settings import Settings


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (8, 7)])
def test_default_receivers_leave_the_main_process_a_core(monkeypatch, cores, expected) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert Settings().receiver_count() == expected


def test_configured_receivers_are_taken_as_given(monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings(receivers=3).receiver_count() == 3
