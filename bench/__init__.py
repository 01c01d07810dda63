"""Benchmarks: the broker and Orthanc side by side, same files, same DCMTK client."""
