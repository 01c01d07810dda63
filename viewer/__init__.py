"""The HTTP face: health, status, and (later) EPR API, DICOMweb, viewer, admin."""
