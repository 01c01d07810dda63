"""DICOM networking, ingest, integration and the CLI that runs everything."""
