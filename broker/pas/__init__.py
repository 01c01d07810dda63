"""PAS integration: HL7 v2 ADT over MLLP, FHIR Patient lookup, reconciliation."""
