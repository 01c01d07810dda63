"""`pacsbroker prefetch|prefetch-rules|evict|storage`: the near/far tiers (docs/tiers.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli_common import (
    JSON_OPT,
    WAIT_OPT,
    Commands,
    actor,
    audited,
    console,
    open_archive,
    queued,
)

if TYPE_CHECKING:
    from storage.archive import Archive

commands = Commands()

prefetch_app = typer.Typer(help="Prefetch rules: which priors to bring near, and when.")


def tiered_archive() -> Archive:
    """The archive, or exit 2 when it has no near tier to work on."""
    archive = open_archive()
    if archive.tiers is None:
        console.print("[red]no near tier is configured (NEAR_DIR or NEAR_S3_ENDPOINT)[/red]")
        raise typer.Exit(2)
    return archive


@commands.command()
def prefetch(
    patient: Annotated[str, typer.Option(help="Every study of this patient")] = "",
    study: Annotated[list[str] | None, typer.Option(help="Or these studies (repeatable)")] = None,
    wait: WAIT_OPT = False,
    as_json: JSON_OPT = False,
) -> None:
    """Bring a patient's studies, or the named studies, into the near tier now."""
    from sqlalchemy import select

    from storage import prefetch as pf
    from storage import registry
    from storage.demographics import Identifier
    from storage.models import Study

    archive = tiered_archive()
    with archive.sessions() as session, session.begin():
        uids = list(study or [])
        if patient:
            p = registry.find(session, Identifier("", patient))
            if p is None:
                console.print(f"[red]no patient {patient!r} in the registry[/red]")
                raise typer.Exit(2)
            uids += session.scalars(select(Study.study_uid).where(Study.patient_fk == p.id))
        if not uids:
            console.print("[red]name --patient or --study[/red]")
            raise typer.Exit(2)
        job = pf.start_manual(session, uids, created_by=actor())
    queued(job, wait, as_json)


@prefetch_app.command("list")
def prefetch_rules_list(as_json: JSON_OPT = False) -> None:
    from storage import prefetch as pf

    with open_archive().sessions() as session:
        rules = pf.list_rules(session)
    if as_json:
        print(json.dumps([r.model_dump() for r in rules]))
        return
    for r in rules:
        print(
            f"{r.id:>4}  {r.name:<24} priors {','.join(r.modalities) or 'any'} "
            f"{r.body_part or ''} ≤{r.years}y max {r.max_studies}  on "
            f"{'order' if r.on_order else ''}{' admission' if r.on_admission else ''}"
            f"{'' if r.enabled else '  (disabled)'}"
        )


@prefetch_app.command("add")
def prefetch_rules_add(
    name: str,
    modality: Annotated[
        list[str] | None, typer.Option(help="Priors' modality (repeatable)")
    ] = None,
    body_part: Annotated[str, typer.Option()] = "",
    years: Annotated[int, typer.Option()] = 5,
    max_studies: Annotated[int, typer.Option()] = 3,
    on_admission: Annotated[bool, typer.Option(help="Also on HL7 A01 admissions")] = False,
    order_modality: Annotated[
        list[str] | None, typer.Option(help="Only orders of this modality (repeatable)")
    ] = None,
) -> None:
    """Add a rule: an order (or admission) for a patient brings these priors near."""
    from pydantic import ValidationError

    from storage import prefetch as pf

    try:
        spec = pf.RuleSpec(
            name=name,
            modalities=modality or [],
            body_part=body_part,
            years=years,
            max_studies=max_studies,
            on_admission=on_admission,
            order_modalities=order_modality or [],
        )
    except ValidationError as e:
        console.print(f"[red]{e.errors()[0]['msg']}[/red]")
        raise typer.Exit(2) from None
    with open_archive().sessions() as session, session.begin():
        rule = pf.save_rule(session, spec)
        audited(session, "prefetch-rule-add", rule.model_dump_json())
    console.print(f"prefetch rule {rule.id} added")


@prefetch_app.command("delete")
def prefetch_rules_delete(rule_id: int) -> None:
    from storage import prefetch as pf

    with open_archive().sessions() as session, session.begin():
        if not pf.delete_rule(session, rule_id):
            console.print(f"[red]no prefetch rule {rule_id}[/red]")
            raise typer.Exit(1)
        audited(session, "prefetch-rule-delete", f"rule {rule_id}")
    console.print(f"prefetch rule {rule_id} deleted")


@commands.command()
def evict(
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of the budget near may keep")
    ] = 0.9,
    wait: WAIT_OPT = False,
    as_json: JSON_OPT = False,
) -> None:
    """Bring the near tier down to a fraction of its budget (pinned objects stay)."""
    from storage import jobs
    from storage import prefetch as pf

    archive = tiered_archive()
    with archive.sessions() as session, session.begin():
        job = jobs.enqueue(session, pf.EVICT, {"fraction": fraction}, created_by=actor())
    queued(job, wait, as_json)


@commands.command("storage")
def storage_cmd(as_json: JSON_OPT = False) -> None:
    """What the archive holds per modality, and per tier with the near hit ratio."""
    from storage import tiers
    from storage.prefetch import usage_by_modality

    archive = open_archive()
    with archive.sessions() as session:
        usage = usage_by_modality(session)
        t = tiers.report(session, archive.tiers.budget) if archive.tiers else None
    if as_json:
        print(json.dumps({"by_modality": usage, "tiers": t}))
        return
    for m in usage:
        print(
            f"{m['modality'] or '-':<6} {m['studies']:>7} studies {m['instances']:>9} "
            f"instances {m['bytes'] / 2**20:>12.1f} MiB"
        )
    if t is None:
        print("one tier (no near tier configured)")
    else:
        near, far = t["near"], t["far"]
        print(
            f"near: {near['objects']} objects, {near['bytes'] / 2**20:.1f} of "
            f"{near['budget_bytes'] / 2**20:.1f} MiB; {near['reads']} reads "
            f"({near['bytes_served'] / 2**20:.1f} MiB); hit ratio {t['hit_ratio']}"
        )
        print(
            f"far:  {far['objects']} objects, {far['bytes'] / 2**20:.1f} MiB; {far['reads']} "
            f"reads ({far['bytes_served'] / 2**20:.1f} MiB)"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(prefetch_app, name="prefetch-rules")
    commands.register(app)
