"""A PAS simulator for the demo and the tests: a FHIR R4 Patient endpoint and an ADT sender.

python -m tools.pas_sim serve --port 8090 --seed-samples
python -m tools.pas_sim adt --to 127.0.0.1:2575 A08 --id 12xx --name "Nordmann^Kari"
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import uuid
from typing import Any

from storage.demographics import NATIONAL_SYSTEMS
from storage.nationalid import IdKind

FNR = NATIONAL_SYSTEMS[IdKind.FNR]
LOCAL = "urn:oid:2.16.578.1.12.4.1.2.9999"  # a made-up hospital-local ID system for the demo


def sample_patients() -> dict[str, dict[str, Any]]:
    """The patients in sample_dicom/, as PAS would have them."""
    from sample_dicom.generate import PATIENTS, synthetic_id

    out = {}
    for i, (name, birth, sex, seed) in enumerate(PATIENTS, start=1):
        out[f"p{i}"] = {
            "identifiers": [
                {"system": FNR, "value": synthetic_id(birth, seed)},
                {"system": LOCAL, "value": f"H{1000 + i}"},
            ],
            "name": name,
            "birth_date": birth.strftime("%Y%m%d"),
            "sex": sex,
        }
    return out


def fhir_patient(pid: str, p: dict[str, Any]) -> dict[str, Any]:
    family, _, rest = p["name"].partition("^")
    given = [g for g in rest.replace("^", " ").split(" ") if g]
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "active": p.get("active", True),
        "identifier": p["identifiers"],
        "name": [{"use": "official", "family": family, "given": given}],
        "gender": {"M": "male", "F": "female", "O": "other"}.get(p.get("sex", ""), "unknown"),
    }
    if p.get("birth_date"):
        b = p["birth_date"]
        res["birthDate"] = f"{b[:4]}-{b[4:6]}-{b[6:8]}"
    return res


def create_app(patients: dict[str, dict[str, Any]]) -> Any:
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI(title="PAS simulator")
    state = {"down": False}
    fhir_json = "application/fhir+json"

    def available() -> None:
        if state["down"]:
            raise HTTPException(503, "PAS simulator is down")

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fhir/Patient")
    def search(identifier: str = "") -> JSONResponse:
        available()
        system, _, value = identifier.rpartition("|")
        hits = [
            fhir_patient(pid, p)
            for pid, p in patients.items()
            if any(
                i["value"] == value and (not system or i["system"] == system)
                for i in p["identifiers"]
            )
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(hits),
            "entry": [{"resource": h} for h in hits],
        }
        return JSONResponse(bundle, media_type=fhir_json)

    @app.get("/fhir/Patient/{pid}")
    def read(pid: str) -> JSONResponse:
        available()
        if pid not in patients:
            raise HTTPException(404, f"no Patient/{pid}")
        return JSONResponse(fhir_patient(pid, patients[pid]), media_type=fhir_json)

    @app.put("/admin/patients/{pid}")
    def put(pid: str, body: dict[str, Any] = Body(...)) -> dict[str, str]:
        patients[pid] = body
        return {"id": pid}

    @app.post("/admin/down")
    def down() -> dict[str, bool]:
        state["down"] = True
        return state

    @app.post("/admin/up")
    def up() -> dict[str, bool]:
        state["down"] = False
        return state

    return app


def adt_message(
    trigger: str,
    ident: str,
    name: str,
    birth: str = "",
    sex: str = "",
    prior: str | None = None,
    control_id: str | None = None,
    charset: str = "UNICODE UTF-8",
) -> bytes:
    """An HL7 v2.5 ADT message as PAS sends it, encoded per MSH-18."""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    structure = {"A40": "ADT_A39", "A34": "ADT_A30", "A47": "ADT_A30"}.get(trigger, "ADT_A01")
    cid = control_id or uuid.uuid4().hex[:20]
    cx = f"{ident}^^^&{FNR.removeprefix('urn:oid:')}&ISO^FNR"
    segs = [
        f"MSH|^~\\&|PASSIM|HF|PACSBROKER|HF|{now}||ADT^{trigger}^{structure}|{cid}|P|2.5"
        f"||||||{charset}",
        f"EVN|{trigger}|{now}",
        f"PID|1||{cx}||{name}||{birth}|{sex}",
    ]
    if prior:
        segs.append(f"MRG|{prior}^^^&{FNR.removeprefix('urn:oid:')}&ISO^FNR")
    segs.append("PV1|1|N")
    codec = "latin-1" if charset == "8859/1" else "utf-8"
    return ("\r".join(segs) + "\r").encode(codec)


def send(host: str, port: int, message: bytes, timeout: float = 10) -> bytes:
    """Send one MLLP-framed message and return the framed reply's content."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"\x0b" + message + b"\x1c\x0d")
        buf = b""
        while not buf.endswith(b"\x1c\x0d"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.strip(b"\x0b").removesuffix(b"\x1c\x0d")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", help="run the FHIR Patient endpoint")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8090)
    sv.add_argument("--seed-samples", action="store_true")
    ad = sub.add_parser("adt", help="send one ADT message over MLLP and print the ACK")
    ad.add_argument("trigger")
    ad.add_argument("--to", default="127.0.0.1:2575")
    ad.add_argument("--id", required=True)
    ad.add_argument("--name", required=True)
    ad.add_argument("--birth", default="")
    ad.add_argument("--sex", default="")
    ad.add_argument("--prior")
    ad.add_argument("--charset", default="UNICODE UTF-8")
    a = ap.parse_args()
    if a.cmd == "serve":
        import uvicorn

        patients = sample_patients() if a.seed_samples else {}
        uvicorn.run(create_app(patients), host=a.host, port=a.port, log_level="warning")
        return
    host, port = a.to.rsplit(":", 1)
    msg = adt_message(a.trigger, a.id, a.name, a.birth, a.sex, a.prior, charset=a.charset)
    print(send(host, int(port), msg).decode("utf-8", "replace").replace("\r", "\n"))


if __name__ == "__main__":
    main()
