"""DICOM services (pynetdicom): one small handler per service, no SQL in the network layer."""
