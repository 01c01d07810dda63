"""De-identification per DICOM PS3.15 Annex E, with keyed pseudonyms and pixel screening."""
