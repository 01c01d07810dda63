"""DICOM-ization of MP4 video and waveform CSVs: the transfer syntax and IOD the standard asks
for, valid objects (dciodvfy), the video kept byte for byte, the numbers kept exactly, clear
refusals, rendering in our viewer, and the CLI end to end into a real broker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import MPEG4HP41, MPEG4HP42STEREO, MPEG4HP422D, MPEG4HP423D, UID

from broker.dicomize.batch import Upload, build, part10
from broker.dicomize.common import Device, DicomizeError
from broker.dicomize.mp4 import Video
from broker.dicomize.signalcsv import parse
from broker.dicomize.video import transfer_syntax
from broker.dicomize.waveform import infer_kind
from storage.dicomheader import parse as parse_header
from storage.models import Instance
from tests.conftest import Broker, free_port
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import findscu, movescu
from tests.test_dicomize import PATIENT, valid
from tests.test_dicomweb import client
from tests.test_dimse import storescp, wait_instances
from tests.test_pas import KARI, pas  # noqa: F401  (fixture)
from viewer.images import frames_shown
from viewer.render import RenderError, View, render

ROOT = "1.2.826.0.1.3680043.10.1432.77."
MULTICHANNEL_RESPIRATORY = "1.2.840.10008.5.1.4.1.1.9.6.2"
SPIROMETER = Device("Vyaire", "Vyntus SPIRO", "LUNGLAB1")
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FIRST_FRAME = (200, 40, 40)  # a red first frame, so the rendered one can be recognised


def mp4(frames: int = 10, size: tuple[int, int] = (64, 48), codec: str = "libx264", **opts: str):
    """A small MP4 made here: frame 1 red, then grey steps."""
    buf = BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream(codec, rate=25, options=opts)
        s.width, s.height, s.pix_fmt = *size, "yuv420p"
        for i in range(frames):
            rgb = FIRST_FRAME if i == 0 else (i * 20,) * 3
            pixels = np.full((size[1], size[0], 3), rgb, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue()


def audio_only_mp4() -> bytes:
    buf = BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=48000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return buf.getvalue()


def csv(meta: dict[str, str], header: list[str], rows: list[list[float]], sep: str = ",") -> bytes:
    lines = [f"# {k}: {v}" for k, v in meta.items()] + [sep.join(header)]
    lines += [sep.join(f"{v:.3f}" for v in row) for row in rows]
    return "\n".join(lines).encode()


def ecg(leads: list[str] = LEADS, seconds: float = 10, rate: int = 500) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    rows = [[math.sin(2 * math.pi * 1.2 * x + i) for i in range(len(leads))] for x in t]
    meta = {"kind": "ecg", "sampling_rate": f"{rate} Hz", "recorded": "2024-05-01T10:22:03"}
    return csv(meta, [f"{lead} [mV]" for lead in leads], rows)


def spirometry(rate: int = 100, channels: int = 1) -> bytes:
    t = np.arange(6 * rate) / rate
    meta = {
        "kind": "respiratory",
        "sampling_rate": str(rate),
        "recorded": "2024-05-01T10:30:00",
        "serial_number": "SN-4711",
        "software_version": "2.1",
    }
    rows = [[6 * math.exp(-x) * math.sin(x)] * channels for x in t]
    return csv(meta, ["flow [L/s]", "volume [L]"][:channels], rows)


def ecg_export() -> bytes:
    """A cardiograph's export: device lines, no kind or rate, time in ms, ';' and decimal comma."""
    lines = [
        "# Manufacturer: Schiller",
        "# Model: CARDIOVIT AT-102",
        "# Serial number = 0815-4711",
        "# Recorded = 2024-05-01 10:22:03",
        "time_ms [ms];" + ";".join(f"Lead {lead} (mV)" for lead in LEADS),
    ]
    for ms in range(0, 10000, 2):
        values = [f"{math.sin(2 * math.pi * 1.2 * ms / 1000 + i):.3f}" for i in range(12)]
        lines.append(f"{ms};" + ";".join(v.replace(".", ",") for v in values))
    return "\r\n".join(lines).encode("cp1252")


def spirometer_export(rate: int = 100, seconds: float = 6) -> bytes:
    """A spirometer's flow/volume export as it comes: no comment lines at all."""
    t = np.arange(int(seconds * rate)) / rate
    flow = 6 * np.exp(-t) * np.sin(t)
    volume = np.cumsum(flow) / rate
    rows = [f"{x:.3f},{f:.3f},{v:.3f}" for x, f, v in zip(t, flow, volume, strict=True)]
    return "\n".join(["Time (s),Flow (L/s),Volume (L)", *rows]).encode()


def test_video_is_kept_byte_for_byte_valid_and_rendered(tmp_path: Path) -> None:
    data = mp4()
    (obj,) = build(
        [Upload("scope.mp4", data)], PATIENT, uid_root=ROOT, device=Device("Olympus", "X1", "E1")
    )
    ds = dcmread(valid(obj, tmp_path, "video"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4.1" and ds.Modality == "XC"
    assert ds.file_meta.TransferSyntaxUID == MPEG4HP41  # Level 1.0 streams fit 4.1
    fragment = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert fragment[: len(data)] == data and len(fragment) - len(data) <= 1  # pad byte only
    assert (ds.NumberOfFrames, ds.CineRate, float(ds.FrameTime)) == (10, 25, 40.0)
    assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (48, 64, "YBR_PARTIAL_420")
    assert ds.SOPInstanceUID.startswith(ROOT) and ds.StudyInstanceUID.startswith(ROOT)
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.StationName) == ("Olympus", "X1", "E1")
    assert ds.PatientName == "Nordmann^Kari" and ds.PatientID == PATIENT.patient_id

    first = np.asarray(Image.open(BytesIO(render(ds, View(fmt="png")))), dtype=float)
    assert first.shape == (48, 64, 3)
    assert np.abs(first.mean(axis=(0, 1)) - FIRST_FRAME).max() < 12  # lossy, but red
    later = np.asarray(Image.open(BytesIO(render(ds, View(frame=5, fmt="png")))), dtype=float)
    assert np.abs(later - 80).mean() < 12  # frame 5 is the grey (80, 80, 80)
    with pytest.raises(RenderError, match="frame 11 out of range"):
        render(ds, View(frame=11))


def test_frame_packed_3d_video_gets_the_3d_syntax(tmp_path: Path) -> None:
    (obj,) = build(
        [Upload("3d.m4v", mp4(**{"x264-params": "frame-packing=3"}))], PATIENT, uid_root=""
    )
    ds = dcmread(valid(obj, tmp_path, "3d"))
    assert ds.file_meta.TransferSyntaxUID == MPEG4HP423D and ds.StereoPairsPresent == "YES"


BASE = Video(64, 48, 10, Fraction(25), "High", 10, "yuv420p", False, None, ())


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, MPEG4HP41),
        ({"profile": "Main"}, MPEG4HP41),
        ({"profile": "Constrained Baseline"}, MPEG4HP41),
        ({"width": 1920, "height": 1080, "rate": Fraction(30000, 1001), "level": 40}, MPEG4HP41),
        ({"width": 1920, "height": 1080, "rate": Fraction(60), "level": 42}, MPEG4HP422D),
        ({"width": 1920, "height": 1080, "rate": Fraction(50), "level": 41}, MPEG4HP422D),
        ({"level": 42}, MPEG4HP422D),
        ({"frame_packed": True}, MPEG4HP423D),
        ({"profile": "Stereo High"}, MPEG4HP42STEREO),
        ({"level": 51}, "exceeds H.264 Level 4.2"),
        ({"width": 3840, "height": 2160, "level": 0}, "exceeds H.264 Level 4.2"),
        ({"profile": "Baseline"}, "profile Baseline"),
        ({"profile": "High 10", "pix_fmt": "yuv420p10le"}, "profile High 10"),
        ({"pix_fmt": "yuv422p"}, "8-bit 4:2:0"),
    ],
)
def test_transfer_syntax_follows_profile_level_size_and_rate(changes: dict, expected: str) -> None:
    video = dataclasses.replace(BASE, **changes)
    if expected.startswith("1.2.840"):
        assert transfer_syntax(video) == expected
    else:
        with pytest.raises(DicomizeError, match=expected):
            transfer_syntax(video)


def with_audio(rate: int, layout: str) -> bytes:
    """An H.264 MP4 with an AAC track."""
    buf = BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        v, a = c.add_stream("libx264", rate=25), c.add_stream("aac", rate=rate, layout=layout)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        c.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), "rgb24")))
        c.mux(v.encode())
        channels = av.AudioLayout(layout).nb_channels
        frame = av.AudioFrame.from_ndarray(np.zeros((channels, 1024), np.float32), "fltp", layout)
        frame.sample_rate, frame.pts = rate, 0
        c.mux(a.encode(frame))
        c.mux(a.encode())
    return buf.getvalue()


def test_audio_is_described_or_refused(tmp_path: Path) -> None:
    (obj,) = build([Upload("talk.mp4", with_audio(48000, "stereo"))], PATIENT, uid_root="")
    ds = dcmread(valid(obj, tmp_path, "audio"))
    (channel,) = ds.MultiplexedAudioChannelsDescriptionCodeSequence
    assert channel.ChannelMode == "STEREO"
    with pytest.raises(DicomizeError, match=r"aac audio track \(44100 Hz, 1 channels"):
        build([Upload("phone.mp4", with_audio(44100, "mono"))], PATIENT, uid_root="")


GOOD = mp4()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.mp4", b"", "empty"),
        ("photo.mp4", b"\x89PNG\r\n\x1a\n" + bytes(64), "not an MP4"),
        ("sound.mp4", audio_only_mp4(), "no video track"),
        ("cut.mp4", GOOD[:-100], "truncated"),
        ("half.mp4", GOOD[: len(GOOD) // 2], "truncated"),
        ("part2.mp4", mp4(codec="mpeg4"), "mpeg4, not H.264"),
    ],
)
def test_bad_videos_are_refused_with_a_reason(name: str, data: bytes, message: str) -> None:
    with pytest.raises(DicomizeError, match=f"{name}: .*{message}"):
        build([Upload(name, data)], PATIENT, uid_root="")


def test_twelve_lead_and_general_ecg(tmp_path: Path) -> None:
    text = ecg()
    (twelve,) = build([Upload("rest.csv", text)], PATIENT, uid_root="")
    ds = dcmread(valid(twelve, tmp_path, "ecg"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1" and ds.Modality == "ECG"
    (group,) = ds.WaveformSequence
    assert (group.NumberOfWaveformChannels, group.NumberOfWaveformSamples) == (12, 5000)
    assert (group.WaveformBitsAllocated, group.WaveformSampleInterpretation) == (16, "SS")
    assert float(group.SamplingFrequency) == 500
    lead2 = group.ChannelDefinitionSequence[1]
    source, unit = lead2.ChannelSourceSequence[0], lead2.ChannelSensitivityUnitsSequence[0]
    assert (source.CodeValue, source.CodingSchemeDesignator) == ("2:2", "MDC")  # CID 3001
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("mV", "UCUM")
    written = np.loadtxt(BytesIO(text), delimiter=",", comments="#", skiprows=4)
    assert np.allclose(ds.waveform_array(0), written, atol=1e-9)  # exactly what the device wrote
    assert ds.AcquisitionDateTime == "20240501102203"

    plot = Image.open(BytesIO(render(ds, View(fmt="png"))))
    assert plot.height > 12 * 100 and np.asarray(plot.convert("L")).min() < 100  # 12 strips, inked
    thumb = Image.open(BytesIO(render(ds, View(size=128))))
    assert max(thumb.size) == 128

    (general,) = build([Upload("rhythm.csv", ecg(["I", "II", "V5"]))], PATIENT, uid_root="")
    ds = dcmread(valid(general, tmp_path, "general"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.2"
    long = build([Upload("long.csv", ecg(seconds=40))], PATIENT, uid_root="")[0]
    assert long.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.2"  # over 16384 samples per lead


def respiratory_modules_valid(obj: object, tmp: Path, name: str) -> Path:
    """dciodvfy (dicom3tools 2022) knows neither respiratory IOD ("Information Object Not
    found"); a copy of the file relabelled as a waveform IOD it knows has every shared module
    checked. Only the copy is relabelled; the object itself is what the tests assert on."""
    path = tmp / f"{name}.dcm"
    obj.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    copy = dcmread(path)
    copy.SOPClassUID = copy.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.9.1.2")
    copy.save_as(tmp / f"{name}-as-general-ecg.dcm")
    assert dciodvfy_errors(tmp / f"{name}-as-general-ecg.dcm") == []
    return path


def test_spirometry_is_a_respiratory_waveform(tmp_path: Path) -> None:
    (obj,) = build([Upload("spiro.csv", spirometry())], PATIENT, uid_root="", device=SPIROMETER)
    ds = dcmread(respiratory_modules_valid(obj, tmp_path, "spiro"))
    # PS3.3 A.34.9: RESP, one multiplex group of one channel at <= 100 samples/s, and the
    # Synchronization and Enhanced General Equipment modules
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.6.1" and ds.Modality == "RESP"
    (group,) = ds.WaveformSequence
    assert group.NumberOfWaveformChannels == 1 and float(group.SamplingFrequency) <= 100
    assert group.ChannelDefinitionSequence[0].ChannelSourceSequence[0].CodeValue == "130421"
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("Vyaire", "Vyntus SPIRO")
    assert (ds.DeviceSerialNumber, ds.SoftwareVersions) == ("SN-4711", "2.1")
    assert ds.SynchronizationTrigger == "NO TRIGGER" and ds.SynchronizationFrameOfReferenceUID
    assert Image.open(BytesIO(render(obj, View()))).format == "JPEG"


def test_spirometer_export_is_a_multichannel_respiratory_waveform(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Flow and volume with a time column and nothing else: the kind from the channel names,
    the rate from the time column, the conversion time and UNKNOWN device, both logged."""
    text = spirometer_export()
    before = dt.datetime.now().astimezone().replace(microsecond=0)
    with caplog.at_level(logging.WARNING, "pacsbroker.dicomize"):
        (obj,) = build([Upload("spiro.csv", text)], PATIENT, uid_root="")
    ds = dcmread(respiratory_modules_valid(obj, tmp_path, "flow-volume"))
    # PS3.3 A.34.16: RESP, Synchronization and Enhanced General Equipment, CID 3005 sources
    assert ds.SOPClassUID == MULTICHANNEL_RESPIRATORY and ds.Modality == "RESP"
    (group,) = ds.WaveformSequence
    assert (group.NumberOfWaveformChannels, group.NumberOfWaveformSamples) == (2, 600)
    assert float(group.SamplingFrequency) == 100
    flow, volume = group.ChannelDefinitionSequence
    assert (flow.ChannelLabel, flow.ChannelSourceSequence[0].CodeValue) == ("Flow", "130421")
    assert volume.ChannelSensitivityUnitsSequence[0].CodeValue == "L"
    written = np.loadtxt(BytesIO(text), delimiter=",", skiprows=1)
    assert np.allclose(ds.waveform_array(0), written[:, 1:], atol=1e-9)  # time is no channel
    device = (ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber)
    assert device == ("UNKNOWN",) * 3 and ds.SoftwareVersions == "UNKNOWN"
    acquired = dt.datetime.strptime(ds.AcquisitionDateTime, "%Y%m%d%H%M%S").astimezone()
    assert before <= acquired <= dt.datetime.now().astimezone()
    assert (
        "no recording time: Acquisition DateTime is the conversion" in caplog.text
        and "written as UNKNOWN" in caplog.text
    )
    assert Image.open(BytesIO(render(obj, View(fmt="png")))).height > 2 * 100

    # one channel faster than the single-channel IOD's 100 samples/s; the caller's device
    (fast,) = build(
        [Upload("f.csv", spirometry(rate=500))], PATIENT, uid_root="", device=SPIROMETER
    )
    assert fast.SOPClassUID == MULTICHANNEL_RESPIRATORY and fast.Manufacturer == "Vyaire"


def test_cardiograph_export_with_time_in_ms_and_semicolons(tmp_path: Path) -> None:
    (obj,) = build([Upload("rest.csv", ecg_export())], PATIENT, uid_root="")
    ds = dcmread(valid(obj, tmp_path, "cardiograph"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12 leads named "Lead I" ...
    (group,) = ds.WaveformSequence
    assert (group.NumberOfWaveformChannels, float(group.SamplingFrequency)) == (12, 500)
    assert group.ChannelDefinitionSequence[1].ChannelSourceSequence[0].CodeValue == "2:2"
    assert ds.waveform_array(0)[1, 0] == pytest.approx(0.015)  # as written, at 2 ms
    assert ds.AcquisitionDateTime == "20240501102203"
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("Schiller", "CARDIOVIT AT-102")
    assert ds.DeviceSerialNumber == "0815-4711"  # General Equipment, from the file


@pytest.mark.parametrize(
    "line",
    [
        "# sampling_rate: 250",
        "# Sampling rate: 250 Hz",
        "# sample_rate = 250",
        "# rate_hz: 250",
        "# fs=250Hz",
        "# Sampling frequency (Hz): 250",
        "Sampling rate: 250",  # no '#' before the header
        "# sampling interval: 4 ms",
    ],
)
def test_rate_spellings(line: str) -> None:
    signal = parse(f"{line}\nART (mmHg)\n90.5\n91.0\n".encode())
    assert signal.rate == 250 and signal.kind == "" and signal.channels[0].unit == "mm[Hg]"


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("Lead II (mV),V5 (uV)", "ecg"),
        ("Paw (mbar),Flow (l/s),Vol (ml)", "respiratory"),
        ("Pressure (cmH2O),CO2 (mmHg)", "respiratory"),
        ("Pressure (mmHg)", "hemodynamic"),
        ("ART [mm Hg],SpO2 [%]", "hemodynamic"),
    ],
)
def test_kind_from_channel_names_and_units(header: str, kind: str) -> None:
    signal = parse(f"# fs: 250\n{header}\n{','.join(['1'] * (header.count(',') + 1))}\n".encode())
    assert infer_kind(signal.channels) == kind


def test_pressures_are_a_hemodynamic_waveform(tmp_path: Path) -> None:
    """A Norwegian Excel export: ';' between cells, a decimal comma; no kind: the names say."""
    rows = [[f"{90 + 30 * math.sin(2 * math.pi * x):.1f}", "8,5"] for x in np.arange(500) / 250]
    text = "# sampling_rate: 250\n# recorded: 2024-05-01T11:00:00+02:00\n"
    text += "ART [mmHg];CVP [cmH2O]\n" + "\n".join(";".join(r).replace(".", ",") for r in rows)
    (obj,) = build([Upload("cath.csv", text.encode("cp1252"))], PATIENT, uid_root="")
    ds = dcmread(valid(obj, tmp_path, "hemo"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.2.1" and ds.Modality == "HD"
    values = ds.waveform_array(0)
    assert values[0].tolist() == pytest.approx([90.0, 8.5])
    assert ds.WaveformSequence[0].ChannelDefinitionSequence[1].ChannelLabel == "CVP"


def test_the_study_viewer_lists_a_waveform_as_one_picture() -> None:
    header = parse_header(part10(build([Upload("r.csv", ecg())], PATIENT, uid_root="")[0]))
    assert frames_shown(Instance(attrs=header.attrs, attrs_ts=header.attrs_ts)) == 1


def line_changed(data: bytes, number: int, new: bytes | None) -> bytes:
    """The file with line `number` (1-based) replaced, or dropped when `new` is None."""
    lines = data.splitlines()
    lines[number - 1 : number] = [] if new is None else [new]
    return b"\n".join(lines)


SPIRO = spirometer_export()
BAD_CSV = [
    ("empty.csv", b"", "empty"),
    ("ragged.csv", ecg(["I", "II"]).replace(b"\n0.000,0.841", b"\n0.000", 1), "line 5 has 1"),
    (
        "short.csv",
        line_changed(SPIRO, 10, b"0.080,0.443"),
        r"line 10 has 2 values; the header \(line 1\) has 3 columns",
    ),
    (
        "jitter.csv",
        line_changed(SPIRO, 302, b"3.004,0.299,2.896"),
        r"line 302: time 'Time' is not uniformly spaced \(a step of 0.014",
    ),
    ("lost.csv", line_changed(SPIRO, 302, None), "line 302: time 'Time' is not uniformly"),
    ("back.csv", line_changed(SPIRO, 4, b"0.005,0.1,0.0"), "line 4: time 'Time' does not"),
    ("both.csv", b"# fs: 250\n" + SPIRO, "says 250 samples/s but the time column 'Time' gives 100"),
    ("norate.csv", ecg().replace(b"# sampling_rate: 500 Hz\n", b""), "no sampling rate"),
    ("text.csv", ecg(["I"]).replace(b"\n0.000", b"\nabc", 1), "line 5, column 'I': 'abc'"),
    ("unit.csv", ecg(["I"]).replace(b"[mV]", b"[volts]"), "unknown unit 'volts'"),
    ("nounit.csv", ecg(["I"]).replace(b" [mV]", b""), "'I' has no unit"),
    ("noheader.csv", b"# fs: 500\n0.1,0.2\n0.3,0.4\n", "line 2 is numbers, not a header"),
    (
        "nokind.csv",
        ecg(["I"]).replace(b"kind: ecg", b"note").replace(b"I [mV]", b"X [%]"),
        "no kind",
    ),
    ("mixed.csv", b"# fs: 100\nI [mV],Flow [L/s]\n0.1,0.2\n", r"channels \(I \[mV\], Flow"),
    ("time.csv", ecg(["I"]).replace(b"I [mV]", b"t [s]"), "no channels: the only column is time"),
    ("lead.csv", ecg(["I", "Q7"]), "'Q7' is unknown for kind 'ecg'"),
    ("slow.csv", ecg(rate=100), "200-1000 samples/s"),
    ("when.csv", ecg().replace(b"2024-05-01T10:22:03", b"yesterday 10:22:03"), "not a date"),
    ("day.csv", ecg().replace(b"2024-05-01T10:22:03", b"2024-05-01"), "not a date and time"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_CSV)
def test_bad_csvs_are_refused_with_a_reason(name: str, data: bytes, message: str) -> None:
    with pytest.raises(DicomizeError, match=f"{name}: .*{message}"):
        build([Upload(name, data)], PATIENT, uid_root="")


@pytest.fixture
def dest() -> int:
    return free_port()


@pytest.fixture
def broker(broker_factory, pas: str, dest: int) -> Broker:  # noqa: F811
    peers = [
        {"ae": "PB-DICOMIZE", "query": False, "retrieve": False},
        {"ae": "FINDSCU"},
        {"ae": "MOVESCU"},
        {"ae": "STORESCP", "port": dest},
    ]
    return broker_factory(
        {"PACSBROKER_PEERS": json.dumps(peers), "PACSBROKER_PAS_FHIR_URL": f"{pas}/fhir"}
    ).start()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the index is not under test
def test_cli_files_video_and_waveforms_that_render(
    broker: Broker, dest: int, tmp_path: Path
) -> None:
    files = {
        "scope.mp4": mp4(),
        "rest.csv": ecg(),
        "spiro.csv": spirometry(),
        "flowvolume.csv": spirometer_export(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    args = ["--manufacturer", "Vyaire", "--model", "Vyntus SPIRO", "--station", "LUNGLAB1"]
    r = broker.cli("dicomize", *(str(tmp_path / n) for n in files), "--patient", KARI, *args)
    assert r.returncode == 0, r.stderr + r.stdout
    uids = [line.split("\t")[1:] for line in r.stdout.splitlines() if "\t" in line]
    assert len(uids) == 4
    wait_instances(broker, 4)
    found = findscu(
        broker.dicom_port,
        {"QueryRetrieveLevel": "IMAGE", "PatientID": KARI, "SOPClassUID": ""},
    )
    classes = {
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic
        "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG
        "1.2.840.10008.5.1.4.1.1.9.6.1",  # Respiratory
        MULTICHANNEL_RESPIRATORY,
    }
    assert {str(f.SOPClassUID) for f in found} == classes
    with client(broker) as web:
        for study, series, sop in uids:
            url = f"/studies/{study}/series/{series}/instances/{sop}"
            rendered = web.get(f"{url}/rendered")
            assert rendered.status_code == 200, rendered.text
            assert rendered.headers["content-type"] == "image/jpeg"
            assert Image.open(BytesIO(rendered.content)).size[0] >= 64
            assert web.get(f"{url}/thumbnail").status_code == 200

    # retrieved by DCMTK's movescu into DCMTK's storescp, the new SOP class included
    scp = storescp(dest, tmp_path / "moved")
    try:
        r = movescu(broker.dicom_port, "STORESCP", uids[0][0])
        assert r.returncode == 0, r.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    moved = [dcmread(p, stop_before_pixels=True) for p in (tmp_path / "moved").iterdir()]
    assert {str(ds.SOPClassUID) for ds in moved} == classes
