"""Deterministic DICOM data made with pydicom: no data is downloaded."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import config, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

ROOT = "1.2.826.0.1.3680043.10.1139"  # test UIDs: our prefix plus counters


def uid(*parts: int | str) -> str:
    return ".".join([ROOT, *map(str, parts)])


@dataclass(frozen=True)
class SeriesSpec:
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    count: int


def image(
    sop_class: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    number: int,
    *,
    patient_id: str = "PAT1",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
    frames: int = 1,
    accession: str = "ACC1",
    study_date: str = "20260115",
) -> Dataset:
    """One image instance with real pixel data (compressed syntaxes get encapsulated fragments)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = "pacsflow test study"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{modality} test series"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, float(number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.5, 0.5]
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = sop_class
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = sop_uid
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = (np.arange(rows * columns * frames, dtype=np.uint32) * 7 + number) % 4096
    raw = pixels.astype("<u2").tobytes()
    if UID(transfer_syntax).is_compressed:
        frame_size = rows * columns * 2
        # Storage keeps bytes as received: fragments need not decode, only be well-formed.
        ds.PixelData = encapsulate([raw[i * frame_size : (i + 1) * frame_size] for i in range(frames)])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = raw
        ds["PixelData"].VR = "OW"
    return ds


def series(spec: SeriesSpec, sop_class: str = CTImageStorage, **kwargs: object) -> list[Dataset]:
    return [
        image(
            sop_class,
            spec.study_uid,
            spec.series_uid,
            f"{spec.series_uid}.{n}",
            n,
            patient_id=spec.patient_id,
            modality=spec.modality,
            **kwargs,
        )  # type: ignore[arg-type]
        for n in range(1, spec.count + 1)
    ]


def ct_series(study: str, series_uid: str, count: int, **kwargs: object) -> list[Dataset]:
    return series(SeriesSpec(study, series_uid, "PAT-CT", "CT", count), CTImageStorage, **kwargs)


def mr_series(study: str, series_uid: str, count: int, **kwargs: object) -> list[Dataset]:
    return series(SeriesSpec(study, series_uid, "PAT-MR", "MR", count), MRImageStorage, **kwargs)


def phantom_ct(study: str, series_uid: str, count: int, patient_name: str, size: int = 512) -> list[Dataset]:
    """A CT series a person recognises in a viewer: a body outline, two lungs that grow and shrink
    along the stack, a heart, a spine and a table, in Hounsfield units with a soft-tissue window."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    datasets = []
    for n in range(1, count + 1):
        z = n / count
        hu = np.full((size, size), -1000, dtype=np.int32)
        hu[(x / 0.42) ** 2 + ((y - 0.02) / 0.3) ** 2 < 1] = 40
        lung = 0.1 * float(np.sin(np.pi * z)) + 0.08
        for side in (-0.17, 0.17):
            hu[((x - side) / 0.12) ** 2 + ((y + 0.02) / lung) ** 2 < 1] = -850
        hu[((x + 0.04) / 0.1) ** 2 + ((y + 0.08) / 0.085) ** 2 < 1] = 60  # the heart
        hu[x**2 + (y - 0.2) ** 2 < 0.045**2] = 700
        hu[(np.abs(y - 0.4) < 0.012) & (np.abs(x) < 0.45)] = 300
        hu += np.random.default_rng(n).normal(0, 12, hu.shape).astype(np.int32)  # CT's grain
        ds = image(
            CTImageStorage,
            study,
            series_uid,
            f"{series_uid}.{n}",
            n,
            patient_id="PHANTOM-1",
            patient_name=patient_name,
            rows=size,
            columns=size,
        )
        ds.SeriesDescription = "Chest phantom"
        ds.StudyDescription = "pacsflow viewer check"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype("<u2").tobytes()
        datasets.append(ds)
    return datasets


def write(ds: Dataset, path: Path, *, as_is: bool = False) -> Path:
    """Write a Part 10 file; ``as_is`` keeps the file meta as set (it may disagree with the dataset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_is:
        ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=not as_is)
    return path


def write_all(datasets: list[Dataset], directory: Path) -> list[Path]:
    return [write(ds, directory / f"{i:05d}.dcm") for i, ds in enumerate(datasets)]


def encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@contextmanager
def lenient_writing() -> Iterator[None]:
    """Let pydicom write invalid values (bad UIDs) on purpose."""
    previous = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = previous


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts in a Part 10 file: after preamble, DICM and the meta group."""
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return 144 + group_length


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def read(path: Path) -> Dataset:
    return dcmread(path)
