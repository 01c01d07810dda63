"""Orders to the modality worklist: HL7 ORM/OMG and REST in, DCMTK findscu -W and MPPS out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import hl7
import httpx
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy.orm import Session

from broker.pas.hl7v2 import Hl7Error, ack, message_type
from broker.pas.orders import parse_order
from storage import registry, worklist
from storage.db import make_engine, migrate, session_factory
from storage.demographics import NATIONAL_SYSTEMS, Demographics, Identifier
from storage.models import OrderStatus
from storage.nationalid import IdKind, make
from tests.conftest import Broker
from tests.dcmtk import findscu
from tools.pas_sim import adt_message, send
from viewer.auth import issue_token, signing_key
from viewer.orders import OrderIn
from viewer.orders import _request as rest_request

MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
FNR = NATIONAL_SYSTEMS[IdKind.FNR]
TODAY = dt.date.today().strftime("%Y%m%d")
TOMORROW = (dt.date.today() + dt.timedelta(days=1)).strftime("%Y%m%d")


def valid_id(birth: dt.date) -> str:
    return next(v for i in range(100, 500) if (v := make(birth, i, synthetic=True)))


ASE = valid_id(dt.date(1961, 4, 12))
OLE = valid_id(dt.date(1950, 1, 2))


def segment(name: str, values: dict[int, str]) -> str:
    fields = [""] * (max(values) + 1)
    for i, v in values.items():
        fields[i] = v
    fields[0] = name
    return "|".join(fields)


def order_message(
    control: str,
    accession: str,
    *,
    patient: str = ASE,
    name: str = "Ødegård^Åse",
    station: str = "CT1",
    modality: str = "CT",
    start: str = f"{TODAY}1030",
    kind: str = "ORM",
    control_id: str | None = None,
    status: str = "",
    omit: tuple[str, ...] = (),
) -> bytes:
    """An ORM^O01 (v2.3.1, timing in OBR-27) or OMG^O19 (v2.5, timing in TQ1) as a RIS sends it."""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    msh = "ORM^O01^ORM_O01|{cid}|P|2.3.1" if kind == "ORM" else "OMG^O19^OMG_O19|{cid}|P|2.5"
    cid = control_id or generate_uid()[-20:]
    timing = f"^^^{start}^^R" if kind == "ORM" else ""
    segs = [
        f"MSH|^~\\&|RIS|HF|PACSBROKER|HF|{now}||{msh.format(cid=cid)}||||||UNICODE UTF-8",
        f"PID|1||{patient}^^^&{FNR.removeprefix('urn:oid:')}&ISO^FNR||{name}||19610412|F",
        "PV1|1|O||||||1234^Lege^Lise",
        segment(
            "ORC",
            {1: control, 2: f"P-{accession}^EPJ", 3: f"{accession}^RIS", 5: status, 7: timing}
            | {18: f"{station}^{station}-room"},
        ),
    ]
    if kind == "OMG":
        segs.append(segment("TQ1", {1: "1", 7: start, 9: "S"}))
    segs.append(
        segment(
            "OBR",
            {
                1: "1",
                2: f"P-{accession}^EPJ",
                3: f"{accession}^RIS",
                4: "NCT0AA^CT hode uten kontrast^NCMP",
                16: "4321^Henviser^Hans",
                18: accession,
                19: f"RP{accession}",
                20: f"SPS{accession}",
                24: modality,
                27: timing,
                34: "77^Radiograf^Rita",
            },
        )
    )
    segs = [s for s in segs if s[:3] not in omit]
    return ("\r".join(segs) + "\r").encode("utf-8")


# --- the HL7 order parser ---------------------------------------------------------------


def test_orm_o01_fields() -> None:
    m = parse_order(order_message("NW", "A100"), allow_synthetic=True)
    assert (m.trigger, m.header.message_type) == ("O01", "ORM")
    (item,) = m.items
    req = item.request
    assert req is not None and item.control == "NW"
    assert req.patient.name == "Ødegård^Åse"
    assert [(i.system, i.value) for i in req.patient.identifiers] == [(FNR, ASE)]
    assert (req.accession_number, req.placer_order_number, req.filler_order_number) == (
        "A100",
        "P-A100",
        "A100",
    )
    assert (req.requested_procedure_id, req.sps_id) == ("RPA100", "SPSA100")
    assert req.procedure_codes == (worklist.Code("NCT0AA", "NCMP", "CT hode uten kontrast"),)
    assert req.requested_procedure_description == "CT hode uten kontrast"
    assert (req.station_ae, req.station_name, req.modality) == ("CT1", "CT1-room", "CT")
    assert (req.scheduled_date, req.scheduled_time) == (TODAY, "1030")
    assert req.referring_physician == "Lege^Lise"
    assert req.performing_physician == "Radiograf^Rita"
    assert req.priority == "ROUTINE"


def test_omg_o19_takes_timing_from_tq1() -> None:
    raw = order_message("NW", "A101", kind="OMG", start=f"{TOMORROW}083015+0100")
    m = parse_order(raw, allow_synthetic=True)
    assert (m.trigger, m.header.message_type) == ("O19", "OMG")
    req = m.items[0].request
    assert req is not None
    here = local(f"{TOMORROW}083015", "+01:00")  # the worklist's times are the broker's
    assert (req.scheduled_date, req.scheduled_time, req.priority) == (*here, "STAT")


def local(stamp: str, zone: str) -> tuple[str, str]:
    """(DA, TM) in this machine's zone of a YYYYMMDDHHMMSS in `zone`."""
    there = dt.datetime.fromisoformat(f"{stamp[:8]}T{stamp[8:]}{zone}").astimezone()
    return there.strftime("%Y%m%d"), there.strftime("%H%M%S")


@pytest.mark.parametrize("control", ["CA", "DC", "SC"])
def test_status_controls_need_no_patient(control: str) -> None:
    raw = order_message(control, "A102", status="IP", omit=("PID", "PV1", "OBR"))
    (item,) = parse_order(raw, allow_synthetic=True).items
    assert (item.control, item.accession, item.request) == (control, "A102", None)
    assert item.order_status == "IP"


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (order_message("NW", "A1", omit=("ORC", "OBR")), "AE", "ORC"),
        (order_message("ZZ", "A1"), "AE", "ORC-1"),
        (order_message("NW", "A1", omit=("PID",)), "AE", "PID"),
        (order_message("NW", "A1", omit=("OBR",)), "AE", "OBR"),
        (order_message("NW", "A1", start="", omit=()), "AE", "scheduled start"),
        (order_message("NW", "A1", start="2026130112"), "AE", "OBR-27.4"),
        (order_message("NW", "A1", patient="12345678901"), "AE", "national ID"),
        (order_message("NW", "A1", modality=""), "AE", "OBR-24"),
        (order_message("NW", "A1").replace(b"ORM^O01", b"ORM^O19"), "AR", "ORM^O19"),
        (order_message("NW", "A1").replace(b"ORM^O01", b"ORU^R01"), "AR", "ORU"),
    ],
)
def test_malformed_orders_are_refused_with_a_reason(raw: bytes, code: str, words: str) -> None:
    with pytest.raises(Hl7Error) as err:
        parse_order(raw, allow_synthetic=True)
    assert err.value.code == code and words in err.value.reason, err.value.reason
    reply = hl7.parse(ack(err.value, code, err.value.reason).decode())
    assert str(reply.segment("MSA")[1]) == code


def test_routing_reads_the_message_type() -> None:
    assert message_type(order_message("NW", "A1")) == "ORM"
    assert message_type(order_message("NW", "A1", kind="OMG")) == "OMG"
    assert message_type(b"\x00garbage") == ""


def rest_order(**kw: str) -> OrderIn:
    body = {
        "accession_number": "R9",
        "patient": {"id": OLE},
        "scheduled_start": "2026-12-07T10:30:00",
        "modality": "CT",
    }
    return OrderIn.model_validate(body | kw)


def test_rest_orders_need_a_modality_and_keep_the_zone() -> None:
    for modality in ("", " "):
        with pytest.raises(ValidationError, match="modality"):
            rest_order(modality=modality)
    req = rest_request(rest_order(scheduled_start="2026-12-07T10:30:00+05:00"), True)
    assert (req.scheduled_date, req.scheduled_time) == local("20261207103000", "+05:00")
    req = rest_request(rest_order(), True)  # no zone: the local time as given
    assert (req.scheduled_date, req.scheduled_time) == ("20261207", "103000")


# --- orders and matching in the index ---------------------------------------------------


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    migrate(engine)
    with session_factory(engine)() as s:
        yield s
    engine.dispose()


def request(accession: str, **kw: str) -> worklist.OrderRequest:
    values: dict[str, str] = {
        "station_ae": "CT1",
        "modality": "CT",
        "scheduled_date": TODAY,
        "scheduled_time": "1030",
    } | kw
    who = values.pop("patient", ASE)
    name = values.pop("name", "Ødegård^Åse")
    demo = Demographics((Identifier(FNR, who),), name, "19610412", "F")
    return worklist.OrderRequest(patient=demo, accession_number=accession, **values)  # type: ignore[arg-type]


def mwl(session: Session, top: dict[str, str], sps: dict[str, str] | None = None) -> list[str]:
    ds = Dataset()
    for k, v in top.items():
        setattr(ds, k, v)
    item = Dataset()
    for k, v in (sps or {}).items():
        setattr(item, k, v)
    ds.ScheduledProcedureStepSequence = [item]
    hits = worklist.matching(session, ds, pn_case_insensitive=False)
    return [o.accession_number for o, _ in hits]


def test_place_is_idempotent_and_pas_demographics_win(session: Session) -> None:
    registry.apply_pas(session, Demographics((Identifier(FNR, ASE),), "Nordmann^Åse", "", "F"))
    order, what = worklist.place(
        session, request("B1", name="Feil^Navn"), source="hl7", uid_root="1.2.3."
    )
    assert what == "created" and order.study_uid.startswith("1.2.3.")
    assert order.patient.name == "Nordmann^Åse"
    again, what = worklist.place(session, request("B1"), source="hl7", uid_root="1.2.3.")
    assert (again.id, again.study_uid, what) == (order.id, order.study_uid, "unchanged")
    moved, what = worklist.place(
        session, request("B1", scheduled_time="1100"), source="hl7", uid_root="1.2.3."
    )
    assert what == "updated" and moved.scheduled_time == "110000.000000"
    assert worklist.order_by_accession(session, "B1") is order
    with pytest.raises(worklist.WorklistError, match="no order"):
        worklist.place(session, request("B2"), source="hl7", uid_root="", must_exist=True)
    with pytest.raises(worklist.WorklistError, match="belongs to patient"):
        worklist.place(session, request("B1", patient=OLE), source="hl7", uid_root="")


def test_an_order_never_takes_identifiers_from_another_patient(session: Session) -> None:
    registry.apply_pas(session, Demographics((Identifier(FNR, ASE),), "Ødegård^Åse", "", "F"))
    registry.apply_pas(session, Demographics((Identifier("urn:ns:HOSP", "H77"),), "Olsen^Ole"))
    both = (Identifier(FNR, ASE), Identifier("urn:ns:HOSP", "H77"))
    req = dataclasses.replace(request("B9"), patient=Demographics(both, "Ødegård^Åse"))
    with pytest.raises(worklist.WorklistError, match="different patients"):
        worklist.place(session, req, source="hl7", uid_root="")
    ole = registry.find(session, Identifier("urn:ns:HOSP", "H77"))
    assert ole is not None and ole.name == "Olsen^Ole"


def test_mwl_matching(session: Session) -> None:
    for acc, kw in {
        "M1": {},
        "M2": {"station_ae": "US1", "modality": "US", "patient": OLE, "name": "Olsen^Ole"},
        "M3": {"scheduled_date": TOMORROW, "scheduled_time": "0800"},
        "M4": {"scheduled_time": "1500"},
    }.items():
        worklist.place(session, request(acc, **kw), source="rest", uid_root="")
    assert mwl(session, {}) == ["M1", "M2", "M4", "M3"]  # by scheduled start
    assert mwl(session, {}, {"ScheduledStationAETitle": "CT1"}) == ["M1", "M4", "M3"]
    assert mwl(session, {}, {"ScheduledStationAETitle": "CT1\\US1"}) == ["M1", "M2", "M4", "M3"]
    assert mwl(session, {}, {"Modality": "US"}) == ["M2"]
    today = {"ScheduledProcedureStepStartDate": TODAY}
    assert mwl(session, {}, {**today, "ScheduledStationAETitle": "CT1"}) == ["M1", "M4"]
    assert mwl(session, {}, {"ScheduledProcedureStepStartDate": f"{TOMORROW}-"}) == ["M3"]
    assert mwl(session, {}, {**today, "ScheduledProcedureStepStartTime": "1000-1200"}) == [
        "M1",
        "M2",
    ]
    assert mwl(session, {}, {"ScheduledProcedureStepStartTime": "-0900"}) == ["M3"]
    assert mwl(session, {"PatientName": "Olsen*"}) == ["M2"]
    assert mwl(session, {"PatientName": "?degård^Åse"}) == ["M1", "M4", "M3"]
    assert mwl(session, {"PatientID": OLE}) == ["M2"]
    assert mwl(session, {"AccessionNumber": "M4"}) == ["M4"]
    assert mwl(session, {"AccessionNumber": "M9"}) == []

    # cancelled, completed and discontinued orders drop off the worklist
    worklist.change_status(session, "M1", OrderStatus.CANCELLED)
    worklist.change_status(session, "M4", OrderStatus.IN_PROGRESS)
    assert mwl(session, {}, {**today, "ScheduledStationAETitle": "CT1"}) == ["M4"]
    assert mwl(session, {}, {"ScheduledProcedureStepStatus": "SCHEDULED"}) == ["M2", "M3"]
    with pytest.raises(worklist.WorklistError, match="discontinued, not cancelled"):
        worklist.change_status(session, "M4", OrderStatus.CANCELLED)
    worklist.change_status(session, "M4", OrderStatus.COMPLETED)
    assert mwl(session, {}, today) == ["M2"]
    with pytest.raises(worklist.WorklistError, match="completed"):
        worklist.place(session, request("M4"), source="hl7", uid_root="")
    assert [o.accession_number for o, _ in worklist.listing(session, station="US1")] == ["M2"]
    done = worklist.listing(session, status=OrderStatus.COMPLETED)
    assert [o.accession_number for o, _ in done] == ["M4"]


def test_mpps_state_machine(session: Session) -> None:
    order, _ = worklist.place(session, request("P1"), source="rest", uid_root="")
    step = Dataset()
    step.PerformedProcedureStepStatus = "IN PROGRESS"
    ref = Dataset()
    ref.StudyInstanceUID = order.study_uid
    ref.AccessionNumber = "P1"
    step.ScheduledStepAttributesSequence = [ref]
    result = worklist.mpps_create(session, "1.2.9.1", step, "CT1")
    assert result.orders == [order] and order.status == OrderStatus.IN_PROGRESS
    with pytest.raises(worklist.MppsError) as err:
        worklist.mpps_create(session, "1.2.9.1", step, "CT1")
    assert err.value.problem is worklist.MppsProblem.DUPLICATE
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    worklist.mpps_set(session, "1.2.9.1", done)
    assert order.status == OrderStatus.COMPLETED
    with pytest.raises(worklist.MppsError) as err:
        worklist.mpps_set(session, "1.2.9.1", done)
    assert err.value.problem is worklist.MppsProblem.FINAL
    with pytest.raises(worklist.MppsError) as err:
        worklist.mpps_set(session, "1.2.9.2", done)
    assert err.value.problem is worklist.MppsProblem.UNKNOWN
    bad = Dataset()
    bad.PerformedProcedureStepStatus = "PAUSED"
    with pytest.raises(worklist.MppsError) as err:
        worklist.mpps_create(session, "1.2.9.3", bad, "CT1")
    assert err.value.problem is worklist.MppsProblem.INVALID
    # an unscheduled step (no order named) is recorded too
    unscheduled = Dataset()
    unscheduled.PerformedProcedureStepStatus = "IN PROGRESS"
    assert worklist.mpps_create(session, "1.2.9.4", unscheduled, "CT1").orders == []


def test_mpps_set_cannot_move_a_step_to_another_order(session: Session) -> None:
    started, _ = worklist.place(session, request("S1"), source="rest", uid_root="")
    other, _ = worklist.place(session, request("S2"), source="rest", uid_root="")
    create = Dataset()
    create.PerformedProcedureStepStatus = "IN PROGRESS"
    create.PatientID = ASE
    ref = Dataset()
    ref.StudyInstanceUID, ref.AccessionNumber = started.study_uid, "S1"
    create.ScheduledStepAttributesSequence = [ref]
    worklist.mpps_create(session, "1.2.9.10", create, "CT1")
    for attrs in (
        {"ScheduledStepAttributesSequence": [Dataset()]},
        {"PatientID": OLE},
        {"PerformedProcedureStepStartTime": "120000", "Modality": "MR"},
    ):
        change = Dataset()
        change.PerformedProcedureStepStatus = "COMPLETED"
        for k, v in attrs.items():
            setattr(change, k, v)
        if "ScheduledStepAttributesSequence" in attrs:
            change.ScheduledStepAttributesSequence[0].StudyInstanceUID = other.study_uid
        with pytest.raises(worklist.MppsError, match="may not change") as err:
            worklist.mpps_set(session, "1.2.9.10", change)
        assert err.value.problem is worklist.MppsProblem.INVALID
        assert all(k in str(err.value) for k in attrs)
    assert (started.status, other.status) == (OrderStatus.IN_PROGRESS, OrderStatus.SCHEDULED)
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedProcedureStepEndTime = "121500"
    assert worklist.mpps_set(session, "1.2.9.10", done).orders == [started]
    assert (started.status, other.status) == (OrderStatus.COMPLETED, OrderStatus.SCHEDULED)


# --- against the running broker ---------------------------------------------------------


@pytest.fixture
def broker(broker_factory) -> Broker:
    peers: list[dict[str, str | bool]] = [{"ae": ae} for ae in ("CT1", "US1", "FINDSCU")]
    peers.append({"ae": "VIEWONLY", "store": False})
    return broker_factory({"PACSBROKER_PEERS": json.dumps(peers)}).start()


def msa(reply: bytes) -> list[str]:
    line = next(s for s in reply.decode().split("\r") if s.startswith("MSA"))
    return line.split("|")


def hl7_send(b: Broker, raw: bytes) -> list[str]:
    return msa(send("127.0.0.1", b.hl7_port, raw))


def worklist_for(b: Broker, station: str, date: str = TODAY) -> list[Dataset]:
    """What findscu -W shows a modality asking for its own steps of one day."""
    sps = "ScheduledProcedureStepSequence[0]"
    keys = {
        "PatientName": "",
        "PatientID": "",
        "PatientBirthDate": "",
        "PatientSex": "",
        "AccessionNumber": "",
        "StudyInstanceUID": "",
        "RequestedProcedureID": "",
        "RequestedProcedureDescription": "",
        "ReferringPhysicianName": "",
        f"{sps}.ScheduledStationAETitle": station,
        f"{sps}.ScheduledProcedureStepStartDate": date,
        f"{sps}.ScheduledProcedureStepStartTime": "",
        f"{sps}.Modality": "",
        f"{sps}.ScheduledPerformingPhysicianName": "",
        f"{sps}.ScheduledProcedureStepID": "",
        f"{sps}.ScheduledProcedureStepDescription": "",
    }
    return findscu(b.dicom_port, keys, model="-W", aet=station)


def mpps(b: Broker, aet: str, uid: str | None, ds: Dataset, *, create: bool) -> int:
    ae = AE(ae_title=aet)
    ae.add_requested_context(MPPS_CLASS)
    assoc = ae.associate("127.0.0.1", b.dicom_port, ae_title="PACSBROKER")
    assert assoc.is_established
    try:
        if create:
            st, _ = assoc.send_n_create(ds, MPPS_CLASS, uid)
        else:
            assert uid is not None
            st, _ = assoc.send_n_set(ds, MPPS_CLASS, uid)
    finally:
        assoc.release()
    return int(st.Status)


def step(status: str, item: Dataset | None = None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if item is not None:
        ref = Dataset()
        ref.StudyInstanceUID = item.StudyInstanceUID
        ref.AccessionNumber = item.AccessionNumber
        ref.RequestedProcedureID = item.RequestedProcedureID
        ref.ScheduledProcedureStepID = item.ScheduledProcedureStepSequence[
            0
        ].ScheduledProcedureStepID
        ds.ScheduledStepAttributesSequence = [ref]
        ds.PerformedStationAETitle = "CT1"
        ds.PerformedProcedureStepStartDate = TODAY
        ds.PerformedProcedureStepStartTime = "103500"
    return ds


def test_hl7_orders_on_the_worklist_until_mpps_ends_them(broker: Broker) -> None:
    assert hl7_send(broker, order_message("NW", "W1"))[1] == "AA"
    assert hl7_send(broker, order_message("NW", "W2", kind="OMG", start=f"{TODAY}1300"))[1] == "AA"
    assert hl7_send(broker, order_message("NW", "W3", start=f"{TOMORROW}0900"))[1] == "AA"
    us = order_message("NW", "W4", patient=OLE, name="Olsen^Ole", station="US1", modality="US")
    assert hl7_send(broker, us)[1] == "AA"
    # a replayed control ID is acknowledged, not applied twice
    replay = order_message("NW", "W5", control_id="fixed-1")
    assert hl7_send(broker, replay)[1] == "AA"
    assert "duplicate" in hl7_send(broker, replay)[3]
    bad = hl7_send(broker, order_message("NW", "W6", omit=("ORC", "OBR")))
    assert bad[1] == "AE" and "ORC" in bad[3]
    wrong = hl7_send(broker, order_message("NW", "W6").replace(b"ORM^O01", b"ORM^O19"))
    assert wrong[1] == "AR"

    items = worklist_for(broker, "CT1")
    assert [str(i.AccessionNumber) for i in items] == ["W1", "W5", "W2"]
    first = items[0]
    assert first.SpecificCharacterSet == "ISO_IR 192"
    assert str(first.PatientName) == "Ødegård^Åse" and first.PatientID == ASE
    assert first.PatientBirthDate == "19610412" and first.PatientSex == "F"
    assert first.RequestedProcedureID == "RPW1"
    assert first.RequestedProcedureDescription == "CT hode uten kontrast"
    assert str(first.ReferringPhysicianName) == "Lege^Lise"
    sps = first.ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledStationAETitle, sps.Modality) == ("CT1", "CT")
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (
        TODAY,
        "103000",
    )
    assert str(sps.ScheduledPerformingPhysicianName) == "Radiograf^Rita"
    assert sps.ScheduledProcedureStepID == "SPSW1"
    assert [str(i.AccessionNumber) for i in worklist_for(broker, "CT1", TOMORROW)] == ["W3"]
    assert [str(i.AccessionNumber) for i in worklist_for(broker, "US1")] == ["W4"]

    # MPPS: in progress keeps it on the list, completed takes it off
    uid = generate_uid()
    assert mpps(broker, "CT1", uid, step("IN PROGRESS", first), create=True) == 0
    assert mpps(broker, "CT1", uid, step("IN PROGRESS", first), create=True) == 0x0111
    assert "W1" in [str(i.AccessionNumber) for i in worklist_for(broker, "CT1")]
    # N-SET may not point the step at another order (PS3.4 Table F.7.2-1)
    assert mpps(broker, "CT1", uid, step("COMPLETED", items[2]), create=False) == 0x0106
    assert mpps(broker, "CT1", uid, step("COMPLETED"), create=False) == 0
    assert [str(i.AccessionNumber) for i in worklist_for(broker, "CT1")] == ["W5", "W2"]
    assert mpps(broker, "CT1", uid, step("DISCONTINUED"), create=False) == 0x0110
    assert mpps(broker, "CT1", generate_uid(), step("COMPLETED"), create=False) == 0x0112
    # discontinued likewise
    second = worklist_for(broker, "CT1")[0]
    other = generate_uid()
    assert mpps(broker, "CT1", other, step("IN PROGRESS", second), create=True) == 0
    assert mpps(broker, "CT1", other, step("DISCONTINUED"), create=False) == 0
    assert [str(i.AccessionNumber) for i in worklist_for(broker, "CT1")] == ["W2"]
    # an unscheduled step, with the instance UID left to the broker
    assert mpps(broker, "CT1", None, step("IN PROGRESS"), create=True) == 0
    # a peer without the store flag may query but not report steps
    assert mpps(broker, "VIEWONLY", generate_uid(), step("IN PROGRESS"), create=True) == 0x0124

    # the order placer cancels over HL7; a cancel of a finished order is refused
    assert hl7_send(broker, order_message("CA", "W2", omit=("PID", "PV1", "OBR")))[1] == "AA"
    assert worklist_for(broker, "CT1") == []
    refused = hl7_send(broker, order_message("CA", "W1", omit=("PID", "PV1", "OBR")))
    assert refused[1] == "AE" and "completed" in refused[3]
    # ADT changes the name: the worklist shows PAS's current demographics
    adt = adt_message("A08", ASE, "Ødegård^Åse Marie", "19610412", "F")
    assert hl7_send(broker, adt)[1] == "AA"
    assert str(worklist_for(broker, "CT1", TOMORROW)[0].PatientName) == "Ødegård^Åse Marie"


def test_rest_orders(broker: Broker) -> None:
    key = signing_key(Path(broker.data_dir))
    http = httpx.Client(base_url=f"http://127.0.0.1:{broker.http_port}")
    orders = "/api/v1/orders"

    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(key, 'ris', role)}"}

    body = {
        "accession_number": "R1",
        "patient": {"id": OLE, "name": "Olsen^Ole", "birth_date": "19500102", "sex": "M"},
        "scheduled_start": f"{TODAY[:4]}-{TODAY[4:6]}-{TODAY[6:]}T14:15:00",
        "modality": "XC",
        "station_ae": "US1",
        "requested_procedure_description": "Sårfoto",
        "procedure_codes": [{"code": "FOTO1", "scheme": "99HF", "meaning": "Sårfoto"}],
    }
    assert http.post(orders, json=body, headers=auth("clinician")).status_code == 403
    placed = http.post(orders, json=body, headers=auth("integration"))
    assert placed.status_code == 200, placed.text
    assert placed.json()["outcome"] == "created" and placed.json()["status"] == "scheduled"
    assert (
        http.post(orders, json=body, headers=auth("integration")).json()["outcome"] == "unchanged"
    )
    bad = http.post(
        orders, json={**body, "patient": {"id": "12345678901"}}, headers=auth("integration")
    )
    assert bad.status_code == 422 and "national ID" in bad.text

    (item,) = worklist_for(broker, "US1")
    assert item.AccessionNumber == "R1" and item.StudyInstanceUID == placed.json()["study_uid"]
    assert item.RequestedProcedureDescription == "Sårfoto"
    assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "141500"

    listed = http.get(orders, params={"station": "US1", "date": TODAY}, headers=auth("modality"))
    assert [o["accession_number"] for o in listed.json()] == ["R1"]
    assert listed.json()[0]["patient"]["name"] == "Olsen^Ole"
    assert http.get(orders, params={"station": "CT1"}, headers=auth("modality")).json() == []

    cancelled = http.post(f"{orders}/R1/cancel", headers=auth("radiology-admin"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert worklist_for(broker, "US1") == []
    assert http.post(f"{orders}/R9/cancel", headers=auth("integration")).status_code == 404
    gone = http.get(orders, params={"status": "cancelled"}, headers=auth("integration")).json()
    assert [o["accession_number"] for o in gone] == ["R1"]


def test_routing_agrees_with_the_header_on_odd_message_types() -> None:
    from broker.pas.hl7v2 import _raw_header

    for raw in (
        b"MSH|^~\\&|A|B|C|D|20260101||adt ^A08|1|P|2.5\r",
        b"MSH#^~\\&#A#B#C#D#20260101##ORM^O01#1#P#2.5\r",
        b"MSH|*~\\&|A|B|C|D|20260101||OMG*O19|1|P|2.5\r",
        b"MSH|^~\\&|A|B|C|D|20260101\r",
    ):
        assert message_type(raw) == _raw_header(raw).message_type.upper()
