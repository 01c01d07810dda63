"""Rows of PS3.15 Table E.1-1 from editions newer than the generated table's (annex_e.SOURCE).

Same format as annex_e.TABLE and looked up before it, so a row here adds a missing attribute
or corrects a generated one; drop a row once a regenerated table carries it.
"""

# The issuers of identifiers name the clinical side's assigning authorities (Universal Entity
# ID, Local Namespace Entity ID): later editions remove them with the identifiers they qualify.
SUPPLEMENT: dict[str, tuple[str, str, str]] = {
    "00080051": ("Issuer of Accession Number Sequence", "X", ".........."),
    "00100024": ("Issuer of Patient ID Qualifiers Sequence", "X", ".........."),
    "00400026": ("Order Placer Identifier Sequence", "X", ".........."),
    "00400027": ("Order Filler Identifier Sequence", "X", ".........."),
}
