"""DICOM-ization: files from devices that do not speak DICOM become DICOM objects."""
