"""Near/far tiers over the real index: reads fill near, LRU eviction keeps the budget, pinned
(prefetched) objects stay, and prior-study selection follows the rule."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from storage import tiers
from storage.archive import Archive
from storage.models import PrefetchRule, Series, Study
from storage.prefetch import bring_near, priors, study_objects
from storage.settings import Settings
from tests.test_query import archive  # noqa: F401  (fixture: the sample set filed)

KB = 1024


@pytest.fixture
def tiered(tmp_path: Path, db_url: str) -> tiers.TieredStore:
    a = Archive(
        Settings(data_dir=tmp_path, database_url=db_url, near_dir=tmp_path / "near"),
        run_migrations=True,
    )
    assert isinstance(a.store, tiers.TieredStore)
    a.store.budget = 10 * KB
    return a.store


def test_reads_fill_near_and_lru_eviction_keeps_the_budget(tiered: tiers.TieredStore) -> None:
    for i in range(8):
        tiered.put(f"s{i}/se/o.dcm", bytes([i]) * (3 * KB))
    assert tiered.used() == 0  # ingest writes far only by default
    assert tiered.get("s0/se/o.dcm") == bytes([0]) * (3 * KB)
    assert tiered.near.exists("s0/se/o.dcm")
    tiered.get("s0/se/o.dcm")  # a hit
    bring_near(tiered, ["s1/se/o.dcm"], tiers.utcnow() + dt.timedelta(hours=1))
    tiered.flush()  # s0's access time is now newer than its fill
    for i in range(2, 8):
        tiered.get(f"s{i}/se/o.dcm")
        tiered.flush()
        assert tiered.used() <= tiered.budget
    held = {k.split("/")[0] for k in tiered.near.keys("")}
    assert "s1" in held  # pinned by the prefetch, never evicted
    assert "s7" in held and "s2" not in held  # least recently used went first
    with tiered.sessions() as session:
        rep = tiers.report(session, tiered.budget)
    assert rep["near"]["reads"] == 1 and rep["far"]["reads"] == 7
    assert rep["near"]["bytes"] == tiered.used() <= tiered.budget


def test_parallel_fills_never_overrun_the_budget(tiered: tiers.TieredStore) -> None:
    """Ingest workers write through to near side by side; together they must stay in budget."""
    start = threading.Barrier(8)

    def fill(i: int) -> bool:
        start.wait()
        return tiered.fill(f"p{i}/se/o.dcm", bytes([i]) * (3 * KB))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fill, range(8)))
    assert tiered.used() <= tiered.budget
    held = sum(1 for _ in tiered.near.keys(""))
    assert held * 3 * KB == tiered.used()  # every index row has its object and no more


def test_pinned_objects_never_push_near_over_its_budget(tiered: tiers.TieredStore) -> None:
    """A prefetch bigger than near fills what fits; later reads are served from far."""
    keys = [f"big{i}/se/o.dcm" for i in range(4)]
    for key in keys:
        tiered.put(key, b"x" * (3 * KB))
    copied, _ = bring_near(tiered, keys, tiers.utcnow() + dt.timedelta(hours=1))
    assert copied == 3 and tiered.used() == 9 * KB
    tiered.put("other/se/o.dcm", b"y" * (2 * KB))
    assert tiered.get("other/se/o.dcm") == b"y" * (2 * KB)
    assert tiered.used() <= tiered.budget and not tiered.near.exists("other/se/o.dcm")


def test_a_prefetch_never_evicts_what_its_study_already_has_near(
    tiered: tiers.TieredStore,
) -> None:
    for key in ("p/se/a.dcm", "p/se/b.dcm", "x/se/y.dcm"):
        tiered.put(key, b"z" * (4 * KB))
    tiered.get("p/se/a.dcm")  # near, and the least recently used
    tiered.flush()
    tiered.get("x/se/y.dcm")
    tiered.flush()
    copied, present = bring_near(
        tiered, ["p/se/b.dcm", "p/se/a.dcm"], tiers.utcnow() + dt.timedelta(hours=1)
    )
    assert (copied, present) == (1, 1)
    held = set(tiered.near.keys(""))
    assert {"p/se/a.dcm", "p/se/b.dcm"} <= held and "x/se/y.dcm" not in held


def test_a_prefetch_resumed_after_a_crash_copies_what_only_has_its_row(
    tiered: tiers.TieredStore,
) -> None:
    """A kill -9 between a fill's row and its object leaves the row alone; resuming copies it."""
    tiered.put("c/se/o.dcm", b"c" * KB)
    assert tiered.fill("c/se/o.dcm", b"c" * KB)
    tiered.near.delete("c/se/o.dcm")
    copied, present = bring_near(tiered, ["c/se/o.dcm"], tiers.utcnow() + dt.timedelta(hours=1))
    assert (copied, present) == (1, 0) and tiered.near.get("c/se/o.dcm") == b"c" * KB


def _fill_pinned(settings: Settings, key: str, start: Any, out: Any) -> None:
    """One broker process filling near (a receiver serving a C-MOVE, say)."""
    a = Archive(settings)
    assert isinstance(a.store, tiers.TieredStore)
    a.store.budget = 10 * KB
    start.wait()
    out.put(a.store.fill(key, b"p" * (4 * KB), pin_until=tiers.utcnow() + dt.timedelta(hours=1)))
    a.close()


def test_fills_from_several_processes_never_overrun_the_budget(
    tiered: tiers.TieredStore, tmp_path: Path, db_url: str
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=db_url, near_dir=tmp_path / "near")
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(2):
        start, out = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(target=_fill_pinned, args=(settings, f"r{round_}/p{i}/o.dcm", start, out))
            for i in range(4)
        ]
        for p in procs:
            p.start()
        filled = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert filled.count(True) == 2 and tiered.used() == 8 * KB, filled
        tiered.drop_near(list(tiered.near.keys("")))


def test_prior_selection_follows_the_rule(archive: Archive) -> None:  # noqa: F811
    with archive.sessions() as session:
        rows = session.execute(
            select(Study.patient_fk, Study.study_uid, Study.study_date, Series.modality).join(
                Series, Series.study_fk == Study.id
            )
        ).all()
        patient, _, _, modality = rows[0]
        mine = {(uid, date, m) for p, uid, date, m in rows if p == patient}
        rule = PrefetchRule(name="all", modalities=modality, body_part="", years=200, max_studies=2)
        got = priors(session, patient, rule, dt.date.today())
        wanted = sorted({(d, u) for u, d, m in mine if m == modality}, reverse=True)[:2]
        assert got == [u for _, u in wanted]
        assert got[0] not in priors(session, patient, rule, dt.date.today(), exclude=got[0])
        rule.years = 0
        assert priors(session, patient, rule, dt.date.today()) == []
        assert all(size > 0 for _, size in study_objects(session, got[0]))
