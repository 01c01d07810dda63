"""What every object we DICOM-ize carries: patient (from the registry), study/series grouping,
the source device, and the SOP Common module."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from storage.patientmodule import PatientModule
from storage.uids import derived_uid

IMPLEMENTATION_CLASS = UID("1.2.826.0.1.3680043.10.1432.0.1")
IMPLEMENTATION_VERSION = "PACSBROKER_01"


class DicomizeError(ValueError):
    """The input cannot become a DICOM object; the message says why, for the uploader."""


@dataclass(frozen=True)
class Device:
    manufacturer: str = ""
    model: str = ""
    station: str = ""


@dataclass(frozen=True)
class Placement:
    """Who the object is about and where it is filed.

    Grouping (docs/dicomize.md): an accession number makes the study; the objects of one
    modality in one upload batch make one series; without an accession, objects of one
    patient, device and day share a study.
    """

    patient: PatientModule
    uid_root: str
    batch: str
    accession: str = ""
    device: Device = field(default_factory=Device)
    when: dt.datetime = field(default_factory=lambda: dt.datetime.now().astimezone())
    ordered_study: str = ""  # the Study Instance UID of the worklist order, when there is one

    def _uid(self, *parts: str) -> str:
        """The same inputs give the same UID, so a later upload joins the same study."""
        return derived_uid(self.uid_root, *parts)

    @property
    def study_uid(self) -> str:
        if self.ordered_study:
            return self.ordered_study
        if self.accession:
            return self._uid("study", self.patient.patient_id, self.accession)
        day = self.when.strftime("%Y%m%d")
        return self._uid("study", self.patient.patient_id, self.device.station, day)

    def series_uid(self, modality: str) -> str:
        """One series per modality in a batch: Modality is a series attribute (PS3.3 C.7.3.1),
        so a PDF and a photo of one upload cannot share a series."""
        return self._uid("series", self.study_uid, self.batch, modality)

    def instance_uid(self, modality: str, number: int) -> str:
        """Repeatable per batch: a batch sent again after a crash yields the same objects,
        which the archive recognises as duplicates instead of filing twice."""
        return self._uid("instance", self.series_uid(modality), str(number))


def base(sop_class: str, modality: str, place: Placement, number: int) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common modules."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = place.instance_uid(modality, number)
    p = place.patient
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    if p.issuer:
        ds.IssuerOfPatientID = p.issuer
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.StudyInstanceUID = place.study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = place.when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = place.when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = (place.accession or place.when.strftime("%y%m%d"))[:16]
    ds.AccessionNumber = place.accession
    ds.Modality = modality
    ds.SeriesInstanceUID = place.series_uid(modality)
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Manufacturer = place.device.manufacturer
    if place.device.model:
        ds.ManufacturerModelName = place.device.model
    if place.device.station:
        ds.StationName = place.device.station
    ds.InstanceCreationDate = dt.date.today().strftime("%Y%m%d")
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def file_meta(ds: Dataset, transfer_syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
