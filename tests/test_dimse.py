"""The archive core against real peers: DCMTK tools, the broker process, MinIO, both databases."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from sample_dicom.generate import large_ct
from storage.archive import Archive
from storage.dicomheader import dataset_offset
from storage.models import Instance
from storage.objects import S3ObjectStore
from storage.stats import archive_counts
from tests.conftest import SAMPLES, Broker, free_port, wait_port
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import ENV, echoscu, findscu, movescu, run, storescu

PEERS_AE = ["STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "ECHOSCU", "PYSCU"]


def peers(dest_port: int = 0) -> str:
    table = [{"ae": ae} for ae in PEERS_AE]
    if dest_port:
        table.append({"ae": "STORESCP", "host": "127.0.0.1", "port": dest_port})
    return json.dumps(table)


def counts(b: Broker) -> dict[str, int]:
    a = Archive(b.settings())
    try:
        with a.sessions() as s:
            return archive_counts(s)
    finally:
        a.close()


def wait_instances(b: Broker, n: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if counts(b)["instances"] >= n:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{counts(b)} after {timeout}s; log: {b.log.read_text()[-2000:]}")


def by_syntax(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(root.rglob("*.dcm")):
        out[str(read_file_meta_info(p).TransferSyntaxUID)].append(p)
    return out


def same_object(sent: Path, got: Path) -> None:
    """Byte-identical data set, or equal content where the transfer syntax had to change."""
    a, b = sent.read_bytes(), got.read_bytes()
    ts_a = read_file_meta_info(sent).TransferSyntaxUID
    ts_b = read_file_meta_info(got).TransferSyntaxUID
    if ts_a == ts_b and not ts_a.is_deflated:
        assert a[dataset_offset(a) :] == b[dataset_offset(b) :], f"{sent.name} differs"
    else:
        da, db = dcmread(sent), dcmread(got)
        assert (da.pixel_array == db.pixel_array).all()
        for ds in (da, db):
            del ds.PixelData
        assert da == db


def storescp(port: int, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "+xa", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return p


def getscu(port: int, out: Path, **keys: str) -> list[Path]:
    out.mkdir()
    r = run(
        ["getscu", "-S", "-aet", "GETSCU", "-aec", "PACSBROKER", "-od", str(out)]
        + [arg for k, v in keys.items() for arg in ("-k", f"{k}={v}")]
        + ["127.0.0.1", str(port)]
    )
    assert r.returncode == 0, r.stderr
    return sorted(out.iterdir())


def test_store_find_move_get_roundtrip(broker_factory, tmp_path: Path) -> None:
    dest_port = free_port()
    b = broker_factory({"PACSBROKER_PEERS": peers(dest_port)}).start()
    groups = by_syntax(SAMPLES)
    assert len(groups) >= 6
    for ts, files in groups.items():
        r = storescu(b.dicom_port, files, ts)
        assert r.returncode == 0, f"{ts}: {r.stderr}"
    total = sum(len(f) for f in groups.values())
    wait_instances(b, total)

    pats = findscu(
        b.dicom_port,
        {"QueryRetrieveLevel": "PATIENT", "PatientName": "*", "PatientID": ""},
        model="-P",
    )
    assert len(pats) == 3
    studies = findscu(
        b.dicom_port,
        {
            "QueryRetrieveLevel": "STUDY",
            "StudyDate": "20230101-",
            "PatientName": "",
            "StudyInstanceUID": "",
            "ModalitiesInStudy": "",
        },
    )
    assert sorted(s.ModalitiesInStudy for s in studies) == ["CR", "CT", "US"]
    ct = next(s for s in studies if s.ModalitiesInStudy == "CT")
    # exactly the requested keys (Specific Character Set may be added)
    assert set(ct.keys()) - {0x00080005} == {
        0x00080020,
        0x00080052,
        0x00080061,
        0x00100010,
        0x0020000D,
    }
    series = findscu(
        b.dicom_port,
        {
            "QueryRetrieveLevel": "SERIES",
            "StudyInstanceUID": ct.StudyInstanceUID,
            "SeriesInstanceUID": "",
            "Modality": "CT",
            "SeriesDescription": "",
            "NumberOfSeriesRelatedInstances": "",
        },
    )
    assert len(series) == 6 and all(int(s.NumberOfSeriesRelatedInstances) == 2 for s in series)
    images = findscu(
        b.dicom_port,
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": ct.StudyInstanceUID,
            "SeriesInstanceUID": series[0].SeriesInstanceUID,
            "SOPInstanceUID": "",
        },
    )
    assert len(images) == 2
    # every C-FIND is in the audit log: who asked, from where, and whose data matched
    deadline = time.time() + 10
    while True:
        r = b.cli("audit", "--action", "dicom.find", "--user", "FINDSCU", "--json")
        finds = json.loads(r.stdout)["events"] if r.returncode == 0 else []
        image_find = [e for e in finds if e["detail"] == "IMAGE 2 matches"]
        if image_find or time.time() > deadline:
            break
        time.sleep(0.2)
    assert image_find, r.stdout + r.stderr
    assert image_find[0]["study_uid"] == ct.StudyInstanceUID
    assert image_find[0]["source"] == "127.0.0.1" and image_find[0]["role"] == "dicom-peer"

    sent = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for files in groups.values()
        for p in files
    }
    scp = storescp(dest_port, tmp_path / "moved")
    try:
        r = movescu(b.dicom_port, "STORESCP", ct.StudyInstanceUID)
        assert r.returncode == 0, r.stderr
    finally:
        scp.terminate()
        scp.wait()
    moved = list((tmp_path / "moved").iterdir())
    assert len(moved) == 12
    for got in moved:
        same_object(sent[str(dcmread(got, stop_before_pixels=True).SOPInstanceUID)], got)

    explicit = next(s for s in series if s.SeriesDescription == "CT Explicit VR Little Endian")
    fetched = getscu(
        b.dicom_port,
        tmp_path / "got",
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=ct.StudyInstanceUID,
        SeriesInstanceUID=explicit.SeriesInstanceUID,
    )
    assert len(fetched) == 2
    for got in fetched:
        same_object(sent[str(dcmread(got, stop_before_pixels=True).SOPInstanceUID)], got)

    # getscu offers only uncompressed syntaxes: RLE, JPEG 2000, ... arrive decompressed
    fetched = getscu(
        b.dicom_port,
        tmp_path / "got-study",
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=ct.StudyInstanceUID,
    )
    assert len(fetched) == 12
    for got in fetched:
        assert not read_file_meta_info(got).TransferSyntaxUID.is_compressed
        assert dciodvfy_errors(got) == []
        same_object(sent[str(dcmread(got, stop_before_pixels=True).SOPInstanceUID)], got)

    r = movescu(b.dicom_port, "NOWHERE", ct.StudyInstanceUID)
    assert (
        "MoveDestinationUnknown" in r.stderr + r.stdout or "a801" in (r.stderr + r.stdout).lower()
    )

    # the same object again: success, no second copy
    r = storescu(b.dicom_port, groups["1.2.840.10008.1.2.1"][:1])
    assert r.returncode == 0
    time.sleep(1.5)
    assert counts(b)["instances"] == total


def _raw_store(port: int, payload: bytes, sop_uid: str, tmp: Path) -> int:
    """Send a hand-made (possibly broken) data set as-is; returns the C-STORE status."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import _config

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    path = tmp / f"raw-{sop_uid}.dcm"
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta)  # type: ignore[arg-type]
        f.write(payload)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE("PYSCU")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSBROKER")
        assert assoc.is_established
        rsp = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return int(rsp.Status)


def _peak_rss_mib(root: int) -> int:
    """The highest peak resident set (VmHWM) of a process and all its descendants, in MiB."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    peak, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children[pid]
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) // 1024)
    return peak


def test_refusals_and_hostile_input(broker_factory, tmp_path: Path) -> None:
    b = broker_factory({"PACSBROKER_PEERS": peers()}).start()
    r = echoscu(b.dicom_port, aet="STRANGER")
    assert r.returncode != 0 and "Rejected" in r.stderr + r.stdout
    assert echoscu(b.dicom_port).returncode == 0
    for junk in (
        b"\x00" * 10,
        os.urandom(5000),
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x01\x00\xff\xff\xff\xff" + os.urandom(64),  # an A-ASSOCIATE-RQ of 4 GiB
        b"\x01\x00\x40\x00\x00\x00" + os.urandom(64),  # of 1 GiB
        b"\x04\x00\x40\x00\x00\x00" + os.urandom(64),  # a P-DATA-TF of 1 GiB
    ):
        with socket.create_connection(("127.0.0.1", b.dicom_port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionError):
                s.recv(100)
    assert b.proc is not None
    # the declared lengths are refused, never allocated
    assert _peak_rss_mib(b.proc.pid) < 512
    started = time.monotonic()
    assert echoscu(b.dicom_port).returncode == 0
    assert time.monotonic() - started < 5
    f = next(SAMPLES.rglob("ct-s1-0000.dcm"))
    data = f.read_bytes()
    ds_bytes = data[dataset_offset(data) :]
    uid = str(dcmread(f).SOPInstanceUID)
    assert (
        _raw_store(b.dicom_port, ds_bytes[:-300], uid, tmp_path) == 0xC002
    )  # truncated pixel data
    pixels = ds_bytes.index(b"\xe0\x7f\x10\x00")
    for cut in (pixels, pixels - 3, pixels + 5):  # before, in the element before, in its header
        assert _raw_store(b.dicom_port, ds_bytes[:cut], uid, tmp_path) == 0xC002, cut
    assert _raw_store(b.dicom_port, b"\x08\x00\x18\x00UI\x04\x001.2\x00", "1.2", tmp_path) == 0xC001
    series = str(dcmread(f).SeriesInstanceUID).encode()
    bad_uid = ds_bytes.replace(series, b"1.2//3".ljust(len(series), b"9"), 1)  # same length
    assert _raw_store(b.dicom_port, bad_uid, uid, tmp_path) == 0xC003
    assert _raw_store(b.dicom_port, ds_bytes, "1.2.3.999", tmp_path) == 0xA900
    assert echoscu(b.dicom_port).returncode == 0, "the broker keeps serving"
    assert counts(b)["instances"] == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_encapsulated_pixel_data_followed_by_trailing_padding_is_accepted(
    broker_factory, tmp_path: Path
) -> None:
    from pydicom.data import get_testdata_file

    # each has Data Set Trailing Padding (FFFC,FFFC) after the sequence delimiter; storescu
    # drops the padding when it sends, `pacsbroker load` (pynetdicom) sends the bytes as they are
    names = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    src = tmp_path / "padded"
    src.mkdir()
    for name in names:
        shutil.copy(str(get_testdata_file(name)), src / name)
    b = broker_factory({}).start()
    r = b.cli("load", str(src))
    assert r.returncode == 0 and f"sent {len(names)} of {len(names)}" in r.stderr, r.stderr
    wait_instances(b, 1)  # one SOP Instance UID: the later two are kept as conflicts


def test_kill9_mid_transfer_loses_nothing(broker_factory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    large_ct(src, 100, 64, 2)
    files = sorted(src.rglob("*.dcm"))
    assert len(files) == 200
    # two receiver processes, each with its own spool segments, as on a machine with 3+ cores
    b = broker_factory({"PACSBROKER_PEERS": peers(), "PACSBROKER_RECEIVERS": "2"}).start()
    acked: list[str] = []
    lock = threading.Lock()

    def send(chunk: list[Path]) -> None:
        ae = AE("PYSCU")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", b.dicom_port, ae_title="PACSBROKER")
        for p in chunk:
            try:
                ds = dcmread(p)
                st = assoc.send_c_store(ds)
            except Exception:
                return
            if getattr(st, "Status", None) == 0:
                with lock:
                    acked.append(str(ds.SOPInstanceUID))
            if not assoc.is_established:
                return
        assoc.release()

    threads = [threading.Thread(target=send, args=(files[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    while len(acked) < 80:
        time.sleep(0.01)
    b.kill9()
    for t in threads:
        t.join(30)
    n = len(acked)
    assert 80 <= n < 200
    b.start()
    wait_instances(b, n)
    a = Archive(b.settings())
    from storage.archive import sha256_of
    from storage.models import Instance

    with a.sessions() as s:
        rows = {r.sop_uid: r for r in s.query(Instance).all()}
    assert set(acked) <= set(rows)
    for row in rows.values():  # acknowledged or not, whatever is indexed is whole
        assert sha256_of(a.store.get(row.object_key)) == row.sha256
    indexed = {row.object_key for row in rows.values()}
    assert set(a.store.keys()) <= indexed, "an object in the archive that nothing indexes"
    a.close()


def test_minio_outage_spools_then_archives(broker_factory, minio) -> None:
    b = broker_factory({"PACSBROKER_PEERS": peers(), **minio.env()}).start()
    files = sorted((SAMPLES / "aase-mr").glob("*.dcm"))
    assert storescu(b.dicom_port, files[:1]).returncode == 0
    wait_instances(b, 1)
    minio.stop()
    r = storescu(b.dicom_port, files[1:])
    assert r.returncode == 0, r.stderr
    time.sleep(2)
    assert counts(b)["instances"] == 1, "nothing is indexed while the archive is down"
    minio.port_reuse = True
    minio.start()
    wait_instances(b, len(files))
    store = S3ObjectStore(f"127.0.0.1:{minio.port}", minio.access, minio.secret, "pacs-test", False)
    assert len(list(store.keys())) == len(files)


def test_erasure_coded_minio_survives_a_wiped_drive(tmp_path: Path) -> None:
    from tests.conftest import MinioServer

    m = MinioServer(tmp_path / "ec", drives=4).start()
    try:
        store = S3ObjectStore(f"127.0.0.1:{m.port}", m.access, m.secret, "ec-test", False)
        objects = {f"s/{i}.dcm": os.urandom(10_000 + i) for i in range(20)}
        for k, v in objects.items():
            store.put(k, v)
        for child in m.drives[0].iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        for k, v in objects.items():
            assert store.get(k) == v
    finally:
        m.stop()


def test_echo_from_loopback_in_demo_default(broker_factory) -> None:
    b = broker_factory({}).start()
    ae = AE("ANYONE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", b.dicom_port, ae_title="PACSBROKER")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_sigterm_stops_every_process(broker_factory) -> None:
    """An init system's stop must not hang on the receivers (it did: 10 s per receiver)."""
    b = broker_factory({}).start()
    assert b.proc is not None
    b.proc.terminate()
    assert b.proc.wait(8) == 0
    deadline = time.time() + 8
    with pytest.raises(ProcessLookupError):
        while time.time() < deadline:  # exited children are reaped by init shortly after
            os.killpg(b.proc.pid, 0)
            time.sleep(0.2)


def _retrieve(port: int, aet: str, level: str, dest: str = "", **keys: str) -> list[Dataset]:
    """The response statuses of one C-MOVE to `dest` (C-GET without one), from pynetdicom."""
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    model = (
        StudyRootQueryRetrieveInformationModelMove
        if dest
        else StudyRootQueryRetrieveInformationModelGet
    )
    ae = AE(aet)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSBROKER")
    assert assoc.is_established
    try:
        rsps = (
            assoc.send_c_move(identifier, dest, model)
            if dest
            else assoc.send_c_get(identifier, model)
        )
        return [status for status, _ in rsps]
    finally:
        assoc.release()


def test_retrieve_refuses_before_the_destination_and_needs_unique_keys(
    broker_factory, tmp_path: Path
) -> None:
    down = free_port()  # the move destination is in the peer table, but nothing listens
    table = [*json.loads(peers(down)), {"ae": "NORETRIEVE", "retrieve": False}]
    b = broker_factory({"PACSBROKER_PEERS": json.dumps(table)}).start()
    files = sorted((SAMPLES / "kari-ct").glob("ct-s[12]-*.dcm"))
    assert storescu(b.dicom_port, files).returncode == 0
    wait_instances(b, len(files))
    study = str(dcmread(files[0]).StudyInstanceUID)
    series = sorted({str(dcmread(f).SeriesInstanceUID) for f in files})

    refusals = [
        ("NORETRIEVE", "STUDY", {"StudyInstanceUID": study}, 0x0124),
        ("MOVESCU", "STUDY", {"PatientName": "*"}, 0xA900),
        ("MOVESCU", "STUDY", {"StudyInstanceUID": "*"}, 0xA900),
        ("MOVESCU", "SERIES", {"StudyInstanceUID": study}, 0xA900),
    ]
    for aet, level, keys, code in refusals:
        for dest in ("STORESCP", ""):
            (final,) = _retrieve(b.dicom_port, aet, level, dest, **keys)
            assert final.Status == code and final.ErrorComment, (aet, keys, dest, final)
            assert final.get("NumberOfFailedSuboperations", 0) == 0, (aet, keys, dest, final)
            assert final.get("NumberOfCompletedSuboperations", 0) == 0
    (final,) = _retrieve(b.dicom_port, "MOVESCU", "STUDY", "STORESCP", StudyInstanceUID=study)
    assert final.Status == 0xA801, "an allowed move to a destination that is down"
    (final,) = _retrieve(b.dicom_port, "MOVESCU", "STUDY", "NOWHERE", StudyInstanceUID=study)
    assert final.Status == 0xA801

    fetched = getscu(
        b.dicom_port,
        tmp_path / "got",
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=study,
        SeriesInstanceUID="\\".join(series),
    )
    assert len(fetched) == len(files)


def _non_loopback_address() -> str | None:
    """This host's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        return str(s.getsockname()[0])


def test_demo_default_rejects_unknown_callers_from_other_hosts_at_association(
    tmp_path: Path,
) -> None:
    from pynetdicom import evt

    from broker.dimse.access import AccessPolicy
    from storage.settings import Peer, Settings

    policy = AccessPolicy(Settings(data_dir=tmp_path))
    assert policy.admits("STRANGER", "127.0.0.1") and policy.admits("STRANGER", "127.0.0.2")
    assert not policy.admits("STRANGER", "192.0.2.7")
    quiet = Peer(ae="QUIET", store=False, query=False, retrieve=False)
    closed = AccessPolicy(Settings(data_dir=tmp_path, peers=[quiet]))
    assert closed.admits("QUIET", "192.0.2.7"), "a known peer may at least echo"
    assert not closed.admits("STRANGER", "127.0.0.1")

    # 127.0.0.2 is loopback too, so another host is this host's own non-loopback address
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address to call from")
    port = free_port()
    ae = AE("PACSBROKER")
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("", port),
        block=False,
        evt_handlers=[
            (evt.EVT_REQUESTED, policy.screen_association),
            (evt.EVT_C_ECHO, lambda _e: 0x0000),
        ],
    )
    try:
        remote = run(["echoscu", "-aet", "STRANGER", "-aec", "PACSBROKER", address, str(port)])
        assert remote.returncode != 0
        assert "Calling AE Title Not Recognized" in remote.stderr + remote.stdout, remote.stderr
        local = run(["echoscu", "-aet", "STRANGER", "-aec", "PACSBROKER", "127.0.0.1", str(port)])
        assert local.returncode == 0, local.stderr
    finally:
        server.shutdown()


def test_retrieved_objects_are_the_stored_bytes(broker_factory, tmp_path: Path) -> None:
    """pynetdicom re-encodes what it sends (no group lengths, names rewritten); C-GET and C-MOVE
    send the archived data set itself when neither PAS nor the peer's syntax changes it."""
    from pydicom.data import get_testdata_file

    dest_port = free_port()
    b = broker_factory({"PACSBROKER_PEERS": peers(dest_port)}).start()
    names = {"693_J2KI.dcm": "+xw", "examples_palette.dcm": "+xe"}  # group lengths; OB^^^^
    for name in names:
        path = Path(str(get_testdata_file(name)))
        ts = str(read_file_meta_info(path).TransferSyntaxUID)
        assert storescu(b.dicom_port, [path], ts).returncode == 0
    wait_instances(b, len(names))
    archive = Archive(b.settings())
    try:
        with archive.sessions() as s:
            stored = {
                i.sop_uid: archive.store.get(i.object_key) for i in s.scalars(select(Instance))
            }
    finally:
        archive.close()
    for name, prefer in names.items():
        sent = dcmread(str(get_testdata_file(name)), stop_before_pixels=True)
        assert any(e.tag.element == 0 for e in sent) or "^^" in str(sent.PatientName), name
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={sent.StudyInstanceUID}"]
        got = tmp_path / f"get-{name}"
        got.mkdir()
        getscu = ["getscu", "-S", "+B", prefer, "-aet", "GETSCU", "-aec", "PACSBROKER"]
        r = run([*getscu, "-od", str(got), *keys, "127.0.0.1", str(b.dicom_port)])
        assert r.returncode == 0, r.stderr
        moved = tmp_path / f"move-{name}"
        moved.mkdir()
        scp = subprocess.Popen(
            ["storescp", "-aet", "STORESCP", "+B", prefer, "-od", str(moved), str(dest_port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(dest_port)
            assert movescu(b.dicom_port, "STORESCP", str(sent.StudyInstanceUID)).returncode == 0
        finally:
            scp.terminate()
            scp.wait()
        for folder in (got, moved):
            (back,) = folder.iterdir()
            data, archived = back.read_bytes(), stored[str(sent.SOPInstanceUID)]
            assert data[dataset_offset(data) :] == archived[dataset_offset(archived) :], back
