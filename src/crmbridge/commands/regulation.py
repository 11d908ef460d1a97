"""`crmbridge schema | check | discover | audit`: the regulation files and the compliance of cached deals."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import typer
from rich.table import Table

from crmbridge import files
from crmbridge.bulk import paused_gc
from crmbridge.cache.store import Cache
from crmbridge.commands import common
from crmbridge.compliance import Audit, audit_cache, violation_json, violation_text
from crmbridge.errors import CrmBridgeError, MappingError
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.discover import draft_binding, todo_left
from crmbridge.mapping.load import Mappings, binding_file, load_mappings, load_regulation
from crmbridge.mapping.portal import PortalSnapshot, lint_live
from crmbridge.mapping.schema import json_schemas
from crmbridge.model import Deal, Violation
from crmbridge.regulation.compiled import CompiledRegulation
from crmbridge.regulation.evaluate import RULES, Evaluator, beyond_look_back, impact

from rich.markup import escape as markup_escape

from crmbridge.text import for_terminal


def escape(text: object) -> str:
    """CRM text inside our rich markup: markup escaped and control characters shown escaped."""
    return markup_escape(for_terminal(text))



def _evaluator_for(cache: Cache, mapper: DealMapper, mappings: Mappings, now: datetime,
                   deal_ids: Sequence[int | str]) -> Evaluator:
    """An evaluator for a few deals. R10 needs each one's client's last purchase across all deals: the deals that
    share a contact or company with them hold it (`with_client_peers`), not the whole cache."""
    peers = mapper.deals(cache.deals.records(cache.deals.with_client_peers(deal_ids)))
    return Evaluator.of(mappings.regulation, now, deals_for_purchases=peers)


def default_regulation_text() -> str:
    """The shipped default regulation (package data; the same text as mappings/regulation.yaml)."""
    from crmbridge import defaults

    return defaults.text("regulation.yaml")


def _mappings(directory: Path | None) -> Mappings:
    settings = common.settings()
    return load_mappings(directory or settings.mappings_dir, crm=settings.crm)


def _snapshot(cache_only: bool) -> tuple[PortalSnapshot, str]:
    """The portal's structure from the cache when it has it, else from the API."""
    settings = common.settings()
    snapshot = PortalSnapshot()
    if settings.cache_path.exists():
        with common.cache(settings) as cache:
            cached = cache.reference.rows()
        snapshot = PortalSnapshot.from_rows(cached.pipelines, cached.stages, cached.fields, cached.users,
                                            cached.departments)
    if not snapshot.empty:
        return snapshot, f"cache {settings.cache_path}"
    if cache_only:
        raise CrmBridgeError(f"the cache {settings.cache_path} has no pipelines yet",
                             hint="run `crmbridge sync` first, or drop --cache-only to ask the portal")
    from crmbridge.connectors.registry import api_snapshot

    # the API's records go through the same conversions a sync would cache them with
    return api_snapshot(common.crm_client(settings)), "the portal's API" if settings.crm == "bitrix24" else "the account's API"


def _webhook_rights() -> bool | None:
    """`user.admin` of the user the Bitrix24 reads run as; None when there is no portal to ask (or it is down)."""
    settings = common.settings()
    if settings.crm != "bitrix24":
        return None
    from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
    from crmbridge.errors import ConfigError, CrmError

    try:
        return Bitrix24Reader(common.crm_client(settings)).webhook_admin()
    except (ConfigError, CrmError):
        return None  # checked against the cache without a reachable portal: nothing to say about its rights


def _too_old(regulation: CompiledRegulation, now: datetime) -> Callable[[Violation], bool]:
    """Whether a violation is older than its rule's look-back window (R7, R8, R9 `look_back`; a stage rule's breach on a
    deal closed longer ago than its `closed_look_back`): recorded, never pushed."""
    directions = regulation.directions
    return lambda violation: (violation.direction in directions
                              and beyond_look_back(violation, directions[violation.direction], now))


def register(app: typer.Typer) -> None:
    @app.command()
    def schema(
        out: Path = typer.Option(None, "--out", help="Directory for the JSON Schema files (default: the mappings dir)."),
    ) -> None:
        """Write the JSON Schema of the mapping files (regulation, bindings, plans, kpi, motivation) for editors."""
        from crmbridge.kpi.schema import kpi_json_schemas

        directory = out or common.settings().mappings_dir
        option = "--out" if out else "CRMBRIDGE_MAPPINGS_DIR"
        files.make_folder(directory, option=option)
        for name, document in {**json_schemas(), **kpi_json_schemas()}.items():
            files.write_text(directory / name, json.dumps(document, ensure_ascii=False, indent=2) + "\n", option=option)
            common.console.print(common.markup("wrote {path}", path=directory / name))

    @app.command()
    def check(
        live: bool = typer.Option(False, "--live", help="Also resolve every id against the portal (cache, else API)."),
        impact_: bool = typer.Option(False, "--impact", help="Show how many cached deals each rule would flag."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with regulation.yaml and the binding (bitrix24.yaml / amocrm.yaml)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Validate the regulation and binding files; every problem as file:line:col: what — fix."""
        from crmbridge.commands.kpi import check_plan_files

        mappings = _mappings(mappings_dir)
        # plans.yaml, kpi.yaml and motivation.yaml are the admin's files too (issue 10)
        plan_problems, plans_summary = check_plan_files(mappings_dir or common.settings().mappings_dir)
        if plan_problems:
            raise MappingError(plan_problems)
        report: dict[str, Any] = {"ok": True, "files": [mappings.regulation_path, mappings.binding_path],
                                  "plans": plans_summary}
        if live:
            snapshot, source = _snapshot(cache_only=False)
            text = Path(mappings.binding_path).read_text(encoding="utf-8")
            problems = lint_live(mappings, snapshot, text)
            if problems:
                raise MappingError([str(problem) for problem in problems])
            report["live"] = source
            report["webhook_admin"] = _webhook_rights()
        if impact_:
            settings = common.settings()
            mapper = DealMapper(mappings.regulation, mappings.binding)
            seen: list[int] = [0]

            def counted(deals: Iterator[Deal]) -> Iterator[Deal]:
                for deal in deals:
                    seen[0] += 1
                    yield deal
            with common.cache(settings) as cache, paused_gc():  # streamed like `audit`: one chunk of deals at a time
                report["impact"] = impact(counted(mapper.stream(cache.deals.iter_records(keys=mapper.deal_keys))),
                                          mappings.regulation, datetime.now(timezone.utc))
            report["deals"] = seen[0]
        if as_json:
            common.print_json(report)
            return
        common.console.print(common.markup("[green]ok[/green]: {regulation} and {binding}{live}; plans: {plans}",
                                           regulation=mappings.regulation_path, binding=mappings.binding_path,
                                           live=f" (checked against {report['live']})" if live else "",
                                           plans=plans_summary))
        if live and report["webhook_admin"] is False:
            common.console.print(f"[yellow]warning[/yellow]: {common.RIGHTS_WARNING}")
        if impact_:
            table = Table(title=f"Impact on {report['deals']:,} cached deals", title_justify="left")
            for column in ("rule", "mode", "would flag", "flagged with current modes"):
                table.add_column(column, justify="right" if "flag" in column else "left")
            for rule, counts in report["impact"].items():
                mode = getattr(mappings.regulation.rules, rule).mode.value
                overrides = {d.rules.get(rule, {}).get("mode") for d in mappings.regulation.directions.values()} - {None}
                shown = mode + (f" ({', '.join(sorted(overrides))} in some directions)" if overrides - {mode} else "")
                table.add_row(rule, common.cell(shown), f"{counts['would_flag']:,}", f"{counts['flagged_now']:,}")
            common.console.print(table)

    @app.command()
    def discover(
        out: Path = typer.Option(None, "--out", help="Where to write the draft (default: <mappings>/bitrix24.draft.yaml)."),
        cache_only: bool = typer.Option(False, "--cache-only", help="Read the portal's structure only from the cache."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    ) -> None:
        """Read the CRM's pipelines, stages, fields and users and write a draft binding (never over your own)."""
        settings = common.settings()
        regulation_path = settings.mappings_dir / "regulation.yaml"
        if not regulation_path.exists():
            # a fresh install: start from the shipped default regulation (and the schemas editors use)
            files.make_folder(settings.mappings_dir, option="CRMBRIDGE_MAPPINGS_DIR")
            files.write_text(regulation_path, default_regulation_text(), option="CRMBRIDGE_MAPPINGS_DIR")
            for name, document in json_schemas().items():
                files.write_text(settings.mappings_dir / name, json.dumps(document, ensure_ascii=False, indent=2) + "\n",
                                 option="CRMBRIDGE_MAPPINGS_DIR")
            common.console.print(common.markup("wrote the default regulation to {path}; edit it to match yours",
                                               path=regulation_path))
        regulation = load_regulation(regulation_path)
        snapshot, source = _snapshot(cache_only)
        default_target = settings.mappings_dir / binding_file(settings.crm).replace(".yaml", ".draft.yaml")
        target = out or default_target
        # only its own draft is rewritten: any other existing file may be the admin's work
        if target.exists() and target.resolve() != default_target.resolve() and not force:
            raise CrmBridgeError(f"{target} exists; discover does not overwrite it",
                                 hint="pass --out with a new file name (or --force), then merge by hand")
        text = draft_binding(regulation, snapshot, crm=settings.crm)
        # the draft names the portal's users: readable by its owner only, like the cache
        files.write_text(target, text, private=True, option="--out")
        todo = todo_left(text)
        common.console.print(common.markup(
            "wrote {target} from {source}: {pipelines} pipelines, {stages} stages, {fields} fields; {todo} `todo` left "
            "for you", target=target, source=source, pipelines=len(snapshot.pipelines),
            stages=sum(len(stages) for stages in snapshot.stages.values()), fields=len(snapshot.fields), todo=todo))
        if target.resolve() == default_target.resolve():
            common.console.print(common.markup("next: settle the `todo`s, rename it to {name} and run "
                                               "`crmbridge check --live`", name=binding_file(settings.crm)))

    @app.command()
    def audit(
        deal: int = typer.Option(None, "--deal", min=1, max=common.MAX_ID, help="Explain one deal rule by rule."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        record: bool = typer.Option(True, "--record/--no-record", help="Open / resolve rows of the violations table."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with regulation.yaml and the binding (bitrix24.yaml / amocrm.yaml)."),
    ) -> None:
        """Evaluate cached deals: open violations by rule and by manager, or one deal explained."""
        mappings = _mappings(mappings_dir)
        settings = common.settings()
        now = datetime.now(timezone.utc)
        with common.cache(settings) as cache:
            if deal is not None:
                _explain_deal(cache, mappings, now, deal, as_json)
                return
            run = audit_cache(cache, mappings, now, record=record)
            names = cache.reference.user_names()
        _print_audit(run, names, as_json)


def _explain_deal(cache: Cache, mappings: Mappings, now: datetime, deal_id: int, as_json: bool) -> None:
    mapper = DealMapper(mappings.regulation, mappings.binding)
    deals = mapper.deals(cache.deals.records([deal_id]))
    if not deals:
        raise CrmBridgeError(f"deal {deal_id} is not in the cache", hint="run `crmbridge sync`, or check the ID")
    evaluator = _evaluator_for(cache, mapper, mappings, now, [deal_id])
    the_deal = deals[0]
    lines = evaluator.explain(the_deal)
    too_old = _too_old(evaluator.regulation, now)
    if as_json:
        common.print_json({"deal": the_deal.id, "title": the_deal.title, "direction": the_deal.direction,
                           "stage": the_deal.stage, "crm_stage": the_deal.crm_stage,
                           "rules": [{"rule": line.rule, "verdict": line.verdict.value, "reason": line.reason,
                                      "violations": [violation_json(v, beyond=too_old(v)) for v in line.violations]}
                                     for line in lines]})
        return
    common.console.print(common.markup(
        "[bold]Deal {id}[/bold] «{title}»: direction {direction}, stage {stage} (CRM {crm_stage}), manager {manager}",
        id=the_deal.id, title=the_deal.title, direction=the_deal.direction or "—", stage=the_deal.stage or "—",
        crm_stage=the_deal.crm_stage, manager=the_deal.manager or "—"))
    colours = {"passed": "green", "failed": "red", "not_applicable": "dim"}
    labels = mappings.regulation.wording.explain
    table = Table(show_header=True)
    for column in ("rule", "verdict", "why"):
        table.add_column(column)
    old = False
    for line in lines:
        severity = f" ({line.violations[0].severity.value})" if line.violations else ""
        if line.violations and all(too_old(v) for v in line.violations):
            severity += " *"  # older than the rule's look-back window: recorded, not pushed
            old = True
        label = getattr(labels, line.verdict.value)  # in the regulation's language
        table.add_row(line.rule, f"[{colours[line.verdict.value]}]{escape(label)}{severity}[/]", escape(line.reason))
    if old:
        table.caption = ("* older than the rule's look-back window (`look_back`, or the deal was closed before its "
                         "`closed_look_back`, or R5's last next-contact option passed): recorded, not pushed to people "
                         "(nobody is tasked or told, nothing is corrected)")
    common.console.print(table)


def _print_audit(run: Audit, names: dict[str, str], as_json: bool) -> None:
    by_rule: Counter[str] = Counter(violation.rule for violation in run.violations)
    # breaches older than the rule's look-back window (R7 / R8 / R9; R1-R4, R6 on deals closed long ago): recorded
    # here, never pushed to people
    too_old = _too_old(run.evaluator.regulation, run.evaluator.now)
    beyond = [too_old(violation) for violation in run.violations]
    old: Counter[str] = Counter(violation.rule for violation, past in zip(run.violations, beyond) if past)
    by_manager: dict[str, Counter[str]] = defaultdict(Counter)
    for violation in run.violations:
        by_manager[violation.manager or "—"][violation.rule] += 1
    if as_json:
        common.print_json_list({
            "deals": run.deals, "judged": run.judged, "violations": len(run.violations), "opened": run.opened,
            "resolved": run.resolved,
            "by_rule": dict(sorted(by_rule.items(), key=lambda item: int(item[0][1:]))),
            "beyond_look_back": dict(sorted(old.items(), key=lambda item: int(item[0][1:]))),
            "by_manager": {manager: dict(counts) for manager, counts in by_manager.items()},
        }, "open", (violation_text(violation, past) for violation, past in zip(run.violations, beyond)))
        return
    common.console.print(f"{run.deals:,} deals evaluated ({run.judged:,} judged afresh, the others unchanged since "
                         f"the last audit): {len(run.violations):,} open violations ({run.opened:,} newly opened, "
                         f"{run.resolved:,} resolved since the last audit)")
    clauses: dict[str, str] = {}
    for violation in run.violations:  # a rule's clause is the same in each of its violations: read once
        if violation.rule not in clauses:
            clauses[violation.rule] = violation.clause.split(".")[0]
    deals_by_rule: dict[str, set[str]] = defaultdict(set)
    for violation in run.violations:
        deals_by_rule[violation.rule].add(violation.deal)
    table = Table(title="Open violations by rule", title_justify="left")
    for column in ("rule", "violations", "deals", "older than look-back", "clause"):
        table.add_column(column, justify="left" if column in ("rule", "clause") else "right")
    for rule in RULES:
        if by_rule[rule]:
            table.add_row(rule, f"{by_rule[rule]:,}", f"{len(deals_by_rule[rule]):,}", f"{old[rule]:,}" if old[rule] else "",
                          common.cell(clauses[rule]))
    if old:
        table.caption = ("older than look-back: breaches of a moment long past (R7, R8, R9 `look_back`), of a deal "
                         "won or lost long ago (`closed_look_back`) or of a client postponed past R5's last "
                         "next-contact option: recorded, not pushed to people")
    common.console.print(table)
    rules = [rule for rule in RULES if by_rule[rule]]
    table = Table(title="Open violations by manager", title_justify="left")
    table.add_column("manager")
    for rule in rules:
        table.add_column(rule, justify="right")
    table.add_column("total", justify="right")
    for manager, counts in sorted(by_manager.items(), key=lambda item: -sum(item[1].values())):
        label = f"{names.get(manager, '')} ({manager})".strip() if manager != "—" else "—"
        table.add_row(common.cell(label), *(str(counts[rule] or "") for rule in rules), str(sum(counts.values())))
    common.console.print(table)
