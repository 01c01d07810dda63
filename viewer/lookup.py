"""The per-request index lookup of the image routes, kept as cheap as one indexed query can be.

`storage.outbound.visible_instances` answers the same question through the ORM; for one image
its statement construction, session and unit of work cost about 0.45 ms of CPU, three times
the query itself, and a viewer asks once per image. Here the statement is built once with bind
parameters and runs on a bare connection. Nothing is cached between requests: a rejection,
a quarantine or a deletion hides the instance from the next request.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, select

from storage.models import VISIBLE, Instance, Patient, Series, Study
from storage.query import NOT_REJECTED

_COLUMNS = [c.key for c in Instance.__table__.c]
# the visibility rules of visible_instances: patient neither quarantined nor merged away,
# instance not rejected (IOCM)
_ONE = (
    select(*Instance.__table__.c, Patient.patient_id, Patient.issuer)
    .join(Instance.series)
    .join(Series.study)
    .join(Study.patient)
    .where(
        Study.study_uid == bindparam("study"),
        Series.series_uid == bindparam("series"),
        Instance.sop_uid == bindparam("sop"),
        Patient.status.in_(VISIBLE),
        NOT_REJECTED,
    )
)


@dataclass(frozen=True)
class Found:
    instance: Instance  # transient: its columns only, no relationships
    patient_id: str
    issuer: str


def visible_instance(engine: Engine, study: str, series: str, sop: str) -> Found | None:
    """The instance a clinical read may see under these three UIDs, or None."""
    with engine.connect() as conn:
        row = conn.execute(_ONE, {"study": study, "series": series, "sop": sop}).first()
    if row is None:
        return None
    values = row._mapping
    inst = Instance(**{key: values[key] for key in _COLUMNS})
    return Found(inst, values["patient_id"], values["issuer"])
