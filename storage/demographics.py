"""A patient as PAS knows it: identifiers with their system, name, birth date and sex."""

from __future__ import annotations

from dataclasses import dataclass

from storage import nationalid

OID_PREFIX = "urn:oid:"
NATIONAL_SYSTEMS = {
    kind: OID_PREFIX + oid for kind, oid in nationalid.ISSUER_OID.items()
}  # fødselsnummer, D-nummer, H-nummer


@dataclass(frozen=True)
class Identifier:
    """`system` is a FHIR identifier system URI (`urn:oid:…`); empty when the sender gave none."""

    system: str
    value: str

    @property
    def national(self) -> bool:
        return self.system in NATIONAL_SYSTEMS.values()


@dataclass(frozen=True)
class Demographics:
    """`name` is in DICOM PN form (Family^Given^Middle^Prefix^Suffix); `birth_date` YYYYMMDD;
    `sex` M/F/O/''. `kept` names the fields (name, birth_date, sex) the source left out, which
    an update leaves as they are: HL7 omits a field that did not change and sends "" to clear
    it (v2.5 2.5.3)."""

    identifiers: tuple[Identifier, ...]
    name: str
    birth_date: str = ""
    sex: str = ""
    kept: frozenset[str] = frozenset()

    def changes(self) -> dict[str, str]:
        """The demographic fields an update sets."""
        values = {"name": self.name, "birth_date": self.birth_date, "sex": self.sex}
        return {k: v for k, v in values.items() if k not in self.kept}


def national_system(value: str, *, allow_synthetic: bool) -> str | None:
    """The system of a valid 11-digit national ID, or None when `value` is not one."""
    try:
        return NATIONAL_SYSTEMS[nationalid.parse(value, allow_synthetic=allow_synthetic).kind]
    except nationalid.InvalidNationalId:
        return None
