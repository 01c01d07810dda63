"""Waveform CSV (signalcsv.py) → 12-lead ECG, General ECG, Respiratory, Multi-channel
Respiratory or Hemodynamic Waveform.

One multiplex group of 16-bit signed samples; each channel's sensitivity is its device's own
resolution (the most decimals it wrote), so the numbers come back exactly whenever they fit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from broker.dicomize.common import DicomizeError, Placement, base, code, file_meta
from broker.dicomize.signalcsv import UNITS, Channel, Signal, parse

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"
RESPIRATORY = "1.2.840.10008.5.1.4.1.1.9.6.1"
MULTICHANNEL_RESPIRATORY = "1.2.840.10008.5.1.4.1.1.9.6.2"
RESPIRATORY_MAX_RATE = 100  # PS3.3 A.34.9: one channel at most 100 samples/s, else A.34.16
FULL_SCALE = 32767  # Waveform Bits Allocated 16, Sample Interpretation SS
UNKNOWN = "UNKNOWN"  # type 1 device identity that neither the caller nor the file gives
log = logging.getLogger("pacsbroker.dicomize")

# Channel names (upper case) → the CID's concept: CID 3001 ECG leads, 3005 respiration, 3003
ECG_LEADS = {
    "I": codes.CID3001.LeadI,
    "II": codes.CID3001.LeadII,
    "III": codes.CID3001.LeadIII,
    "AVR": codes.CID3001.AvrAugmentedVoltageRight,
    "AVL": codes.CID3001.AvlAugmentedVoltageLeft,
    "AVF": codes.CID3001.AvfAugmentedVoltageFoot,
    **{f"V{n}": getattr(codes.CID3001, f"LeadV{n}") for n in range(1, 10)},
    **{f"V{n}R": getattr(codes.CID3001, f"LeadV{n}R") for n in range(2, 10)},
}
TWELVE_LEADS = {
    ECG_LEADS[n]
    for n in ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
}
RESPIRATION = {
    **dict.fromkeys(("FLOW", "AIRFLOW", "FLOWRATE"), codes.CID3005.Airflow),
    **dict.fromkeys(
        ("VOLUME", "VOL", "RESPIRATION", "RESP", "TIDALVOLUME"), codes.CID3005.RespirationWaveform
    ),
    **dict.fromkeys(
        ("PRESSURE", "PAW", "AIRWAYPRESSURE", "MOUTHPRESSURE"), codes.CID3005.RespiratoryPressure
    ),
    **dict.fromkeys(("CO2", "ETCO2", "CAPNOGRAM"), codes.CID3005.CO2Respiration),
    "EFFORT": codes.CID3005.RespiratoryEffort,
    **dict.fromkeys(("THORACIC", "THORAX", "CHEST"), codes.CID3005.ThoracicRespiratoryEffort),
    **dict.fromkeys(("ABDOMINAL", "ABDOMEN", "ABD"), codes.CID3005.AbdominalRespiratoryEffort),
}
HEMODYNAMIC_SOURCES = {
    "ART": codes.CID3003.ArterialPressureWaveform,
    "ABP": codes.CID3003.ArterialPressureWaveform,
    "AO": codes.CID3003.AorticPressureWaveform,
    "FEM": codes.CID3003.FemoralArteryPressureWaveform,
    "CVP": codes.CID3003.CentralVenousPressureWaveform,
    "PA": codes.CID3003.PulmonaryArteryPressureWaveform,
    "PAP": codes.CID3003.PulmonaryArteryPressureWaveform,
    "PCWP": codes.CID3003.PulmonaryCapillaryWedgePressureWaveform,
    "PAWP": codes.CID3003.PulmonaryArteryWedgePressureWaveform,
    "RA": codes.CID3003.RightAtriumPressureWaveform,
    "RV": codes.CID3003.RightVentriclePressureWaveform,
    "LA": codes.CID3003.LeftAtriumPressureWaveform,
    "LV": codes.CID3003.LeftVentriclePressureWaveform,
    "SPO2": codes.CID3003.HemodynamicOxygenSaturationWaveform,
    "TEMP": codes.CID3003.TemperatureWaveform,
    # a pressure the file does not place: respiratory when its unit is, else this
    **dict.fromkeys(("PRESSURE", "BP", "IBP"), codes.CID3003.HemodynamicPressureWaveform),
}


@dataclass(frozen=True)
class Kind:
    """One waveform family: its vocabulary, units and the IOD constraints of PS3.3 A.34."""

    modality: str
    sources: dict[str, Code]
    units: set[str]
    rates: tuple[float, float]
    max_channels: int


RESPIRATORY_UNITS = {"L/s", "L/min", "mL/s", "L", "mL", "cm[H2O]", "mbar", "kPa", "mm[Hg]", "%"}
KINDS = {
    "ecg": Kind("ECG", ECG_LEADS, {"mV", "uV", "V"}, (200, 1000), 24),  # A.34.3, A.34.4
    # A.34.9 (one channel, <= 100 samples/s) or else A.34.16, which constrains neither
    "respiratory": Kind("RESP", RESPIRATION, RESPIRATORY_UNITS, (0, math.inf), 65535),
    "hemodynamic": Kind(  # A.34.6
        "HD", HEMODYNAMIC_SOURCES, {"mm[Hg]", "kPa", "cm[H2O]", "%", "Cel"}, (0, 400), 8
    ),
}
# for a channel whose name says nothing: the kind its unit usually belongs to
UNIT_KINDS = {
    **dict.fromkeys(("mV", "uV", "V"), "ecg"),
    **dict.fromkeys(("L/s", "L/min", "mL/s", "L", "mL", "cm[H2O]", "mbar"), "respiratory"),
    "mm[Hg]": "hemodynamic",
}
DEVICE = (  # Enhanced General Equipment's type 1 attributes, and the CSV keys that give them
    ("Manufacturer", "manufacturer"),
    ("ManufacturerModelName", "model"),
    ("DeviceSerialNumber", "serial_number"),
    ("SoftwareVersions", "software_version"),
)


def waveform(data: bytes, place: Placement, number: int = 1) -> Dataset:
    signal = parse(data)
    signal = dataclasses.replace(signal, kind=signal.kind or infer_kind(signal.channels))
    kind = KINDS.get(signal.kind)
    if kind is None:
        raise DicomizeError(f"kind {signal.kind!r} is not one of {', '.join(KINDS)}")
    _check(signal, kind)
    ds = base(_sop_class(signal), kind.modality, place, number)
    recorded = signal.recorded
    if recorded is None:
        recorded = place.when
        log.warning(
            "waveform CSV with no recording time: Acquisition DateTime is the conversion time %s",
            recorded.isoformat(timespec="seconds"),
        )
    ds.ContentDate = recorded.strftime("%Y%m%d")
    ds.ContentTime = recorded.strftime("%H%M%S")
    ds.AcquisitionDateTime = recorded.strftime("%Y%m%d%H%M%S")
    if kind.modality == "HD":  # type 2C: a pressure's site may be paired (femoral) and is unknown
        ds.Laterality = ""
    ds.AcquisitionContextSequence = []
    # Synchronization module (mandatory for Respiratory, and for Hemodynamic originals)
    ds.SynchronizationFrameOfReferenceUID = generate_uid(prefix=place.uid_root or None)
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    _equipment(ds, signal.meta, enhanced=signal.kind == "respiratory")
    ds.WaveformSequence = [_multiplex_group(signal, kind)]
    file_meta(ds, ExplicitVRLittleEndian)
    return ds


def infer_kind(channels: list[Channel]) -> str:
    """The one kind the channels' names (else units) fit; refused if they fit none or several."""
    common = set(KINDS)
    for ch in channels:
        named = {k for k, kind in KINDS.items() if source(kind, ch.name) is not None}
        fitting = {k for k in named if ch.unit in KINDS[k].units}
        by_unit = {UNIT_KINDS[ch.unit]} if ch.unit in UNIT_KINDS else set()
        common &= (fitting & by_unit) or fitting or named or by_unit  # the narrowest that says
    if len(common) == 1:
        return common.pop()
    shown = ", ".join(f"{ch.name} [{ch.unit}]" for ch in channels[:8])
    raise DicomizeError(
        f"no kind, and the channels ({shown}) do not tell it: add a line '# kind: ecg' "
        "(or respiratory, hemodynamic)"
    )


def source(kind: Kind, name: str) -> Code | None:
    """The coded source of a channel name: `II`, `Lead II`, `ECG_II`, `aVR`, `Flow`, `CVP`..."""
    key = re.sub(r"[^A-Z0-9]", "", name.upper())
    return kind.sources.get(key) or kind.sources.get(re.sub(r"^(?:LEAD|ECG|EKG)", "", key))


def _check(signal: Signal, kind: Kind) -> None:
    """The IOD's content constraints, as refusals the uploader can act on."""
    low, high = kind.rates
    if not low <= signal.rate <= high:
        span = f"{low:g}-{high:g}" if low else f"at most {high:g}"
        raise DicomizeError(
            f"{signal.kind} waveforms are sampled at {span} samples/s in DICOM (PS3.3 A.34); "
            f"this file says {signal.rate:g}"
        )
    if len(signal.channels) > kind.max_channels:
        raise DicomizeError(
            f"{len(signal.channels)} channels; a {signal.kind} waveform holds at most "
            f"{kind.max_channels} (PS3.3 A.34)"
        )
    for ch in signal.channels:
        if source(kind, ch.name) is None:
            raise DicomizeError(
                f"channel {ch.name!r} is unknown for kind {signal.kind!r}; "
                f"known: {', '.join(kind.sources)}"
            )
        if ch.unit not in kind.units:
            raise DicomizeError(f"channel {ch.name!r}: unit {ch.unit} does not fit {signal.kind}")


def _sop_class(signal: Signal) -> str:
    if signal.kind == "respiratory":
        single = len(signal.channels) == 1 and signal.rate <= RESPIRATORY_MAX_RATE
        return RESPIRATORY if single else MULTICHANNEL_RESPIRATORY
    if signal.kind == "hemodynamic":
        return HEMODYNAMIC
    leads = {source(KINDS["ecg"], ch.name) for ch in signal.channels}
    samples = len(signal.channels[0].values)
    # PS3.3 A.34.3.4: at most 13 channels and 16384 samples per channel
    twelve = leads >= TWELVE_LEADS and len(signal.channels) <= 13 and samples <= 16384
    return TWELVE_LEAD_ECG if twelve else GENERAL_ECG


def _equipment(ds: Dataset, meta: dict[str, str], *, enhanced: bool) -> None:
    """The device: as the caller names it, else as the file does. Enhanced General Equipment
    (both respiratory IODs) makes all four type 1: what nobody knows is UNKNOWN, said so."""
    missing = []
    for keyword, key in DEVICE:
        value = str(ds.get(keyword) or "") or meta.get(key, "").replace("\\", "/")[:64]
        if not value and enhanced:
            value = UNKNOWN
            missing.append(keyword)
        if value:
            setattr(ds, keyword, value)
    if missing:
        log.warning(
            "respiratory waveform: %s not given, written as %s", ", ".join(missing), UNKNOWN
        )


def _multiplex_group(signal: Signal, kind: Kind) -> Dataset:
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(signal.channels)
    group.NumberOfWaveformSamples = len(signal.channels[0].values)
    group.SamplingFrequency = f"{signal.rate:g}"
    group.MultiplexGroupLabel = signal.kind.upper()
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    samples, definitions = [], []
    for ch in signal.channels:
        counts, sensitivity = _quantize(ch)
        samples.append(counts)
        definitions.append(_definition(ch, kind, sensitivity))
    group.ChannelDefinitionSequence = definitions
    # samples are interleaved: all channels of sample 1, then of sample 2, ...
    group.WaveformData = np.stack(samples, axis=1).astype("<i2").tobytes()
    return group


def _quantize(ch: Channel) -> tuple[np.ndarray, str]:
    """Counts and sensitivity (units per count): the device's resolution when the values fit in
    16 bits, else the full 16-bit range (then each value is off by at most half a count)."""
    values = np.asarray(ch.values, dtype=np.float64)
    peak = float(np.abs(values).max())
    step = 10.0**-ch.decimals
    if peak / step > FULL_SCALE:
        step = float(f"{peak / (FULL_SCALE - 16):.6g}")  # margin: the DS text is what counts
    sensitivity = f"{step:.6g}"
    counts = np.rint(values / float(sensitivity))
    return counts.astype(np.int16), sensitivity


def _definition(ch: Channel, kind: Kind, sensitivity: str) -> Dataset:
    concept = source(kind, ch.name)
    assert concept is not None  # _check refused unknown channels
    item = Dataset()
    item.ChannelLabel = ch.name[:64]
    item.ChannelSourceSequence = [code(concept.value, concept.scheme_designator, concept.meaning)]
    item.ChannelSensitivity = sensitivity
    item.ChannelSensitivityUnitsSequence = [code(ch.unit, "UCUM", UNITS[ch.unit])]
    item.ChannelSensitivityCorrectionFactor = "1"
    item.ChannelBaseline = "0"
    item.ChannelSampleSkew = "0"
    item.WaveformBitsStored = 16
    return item
