"""Stage rules: R1 order of stages, R2 required fields, R3 stage task, R4 probability."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crmbridge.mapping.schema import RequirementSpec
from crmbridge.model import LOST, TASK, WON, Deal, EntryKind, StageEntry, Task, TaskStatus, Violation
from crmbridge.regulation.compiled import CompiledDirection, Context, Text, joined, render, say, violation

Why = list[str] | None
NOT_APPLICABLE = None
#: a task created a little before the history row still belongs to the stage (clocks and webhooks lag)
TASK_TOLERANCE = timedelta(minutes=5)


def current_run(deal: Deal) -> tuple[StageEntry, ...]:
    """The deal's stage entries since it last came into its current direction (oldest first)."""
    return deal.run  # computed once when the Deal is built (Deals are immutable, it cannot go stale)


def previous_regulated(run: tuple[StageEntry, ...]) -> StageEntry | None:
    """The last entry before the current one that is in a regulated (not ignored) stage."""
    for entry in reversed(run[:-1]):
        if entry.stage is not None:
            return entry
    return None


# ---------------------------------------------------------------- R1


def _judge_step(spec: Any, direction: CompiledDirection, entry: StageEntry, previous: StageEntry | None,
                came_from_other_pipeline: bool) -> tuple[list[str], str, str] | None:
    """R1 on one arrival: (skipped stages, where it came from, why) when it broke the order, else None."""
    target = entry.stage
    order = direction.order
    if previous is None and came_from_other_pipeline and spec.pipeline_change_any_stage:
        return None
    if previous is None:
        if target == LOST or target == direction.first_stage or target in spec.created_in:
            return None
        if target == WON:
            return list(order), "", "created_won"
        return [stage for stage, position in order.items() if position < order[target]], "", "created_later"
    origin = previous.stage or ""
    if target == origin:
        return None
    if target == LOST:
        return None if spec.lost_from_any else ([], origin, "lost_not_allowed")
    if target == WON:
        allowed = spec.won_from or [direction.last_stage]
        if origin in allowed:
            return None
        skipped = [stage for stage, position in order.items() if position > order[origin]] if origin in order else []
        return (skipped or [allowed[-1]]), origin, "won_not_from_last"
    step = order[target] - order.get(origin, order[target])
    if step == 1:
        return None  # the common case: one stage forward
    if origin in (WON, LOST) or step <= 0:
        return None if spec.allow_backward else ([], origin, "backward")
    skipped = [stage for stage, position in order.items() if order[origin] < position < order[target]]
    if not skipped or spec.allow_skip:
        return None
    return skipped, origin, "skipped"


def check_r1(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R1 Order: forward one stage at a time, back allowed, Won only from the last stage, Lost from anywhere.

    Every arrival of the deal's current run in its direction is judged; a skip stays open while the deal is
    past a stage it skipped and has not been through it since, so history is not forgotten; moving the
    deal back to before the skipped stages (a revert) closes it.
    """
    spec = direction.rules.R1
    run = deal.run
    if not run or deal.stage is None:
        if why is not None:
            say(ctx, why, "no_history" if not run else "not_regulated")
        return NOT_APPLICABLE
    from_other_pipeline = len(run) < len(deal.history) or run[0].kind is EntryKind.PIPELINE_CHANGED
    found: list[Violation] = []
    previous: StageEntry | None = None
    previous_position: int | None = None
    order = direction.order
    position_of = order.get
    created_in = direction.created_in
    current_position = order.get(deal.stage) if deal.stage not in (WON, LOST) else None
    for index, entry in enumerate(run):
        stage = entry.stage
        if stage is None:
            continue
        position = position_of(stage)
        # the common cases need no further judging: created where deals may start, or one stage forward
        if (stage in created_in if previous is None
                else position is not None and previous_position is not None and position - previous_position == 1):
            previous, previous_position = entry, position
            continue
        verdict = _judge_step(spec, direction, entry, previous, from_other_pipeline)
        previous_position = position
        previous = entry
        if verdict is None:
            continue
        skipped, origin, kind = verdict
        later = {later_entry.stage for later_entry in run[index + 1:]}
        if skipped and kind in ("skipped", "created_later", "won_not_from_last") and all(
            stage in later or (current_position is not None and current_position <= order[stage])
            for stage in skipped
        ):
            # repaired: the deal went through the skipped stages afterwards, or is back before them
            # (e.g. the bridge reverted the illegal move): it is no longer past a stage it skipped
            continue
        target = entry.stage
        skipped_names = ", ".join(f"«{direction.stage_name(stage)}»" for stage in skipped)
        if kind == "won_not_from_last":
            note = render(ctx.regulation.spec.wording.won_not_from_last,
                          {"stage": direction.stage_name((spec.won_from or [direction.last_stage])[0])})
            skipped_names = f"{skipped_names} ({note})" if skipped_names else note
        found.append(violation(
            "R1", deal, direction, ctx, since=entry.entered, entry=entry, stage=target, missing=tuple(skipped),
            values={"from_stage": direction.stage_name(origin) if origin else "—", "skipped": skipped_names,
                    "missing": skipped_names},
            details={"from_stage": origin or None, "to_stage": target, "skipped": skipped, "kind": kind,
                     "current": index == len(run) - 1}))
    if why is not None:
        if found:
            why.extend(violation.message for violation in found)
        elif from_other_pipeline and len(run) == 1:
            say(ctx, why, "from_other_pipeline", stage=direction.stage_name(run[0].stage))
        else:
            say(ctx, why, "order_kept", path=" -> ".join(direction.stage_name(e.stage) for e in run if e.stage))
    return tuple(found)


# ---------------------------------------------------------------- R2


def field_problem(deal: Deal, requirement: RequirementSpec, ctx: Context) -> str | None:
    """Why a required field is not acceptable (in the regulation's wording), or None when it is."""
    wording = ctx.regulation.spec.wording
    value = deal.fields.get(requirement.field)
    if value is None or value.empty:
        return wording.empty
    if value.problem is not None:
        return f"{wording.not_a_date} ({value.raw})"
    found = value.value
    if isinstance(found, Decimal):
        if found == 0:
            return wording.zero
        if found < 0:
            return wording.not_positive
    if requirement.equals is not None and found != requirement.equals:
        return render(wording.wrong_option, {"expected": requirement.equals})
    if requirement.future:
        zone = ctx.regulation.calendar.zone
        day = found.astimezone(zone).date() if isinstance(found, datetime) else found
        if isinstance(day, date) and ctx.day_over(day):
            return wording.in_past
    return None


def check_r2(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R2 Required fields: the fields the regulation requires for entering / leaving stages are valid."""
    if deal.stage is None:
        if why is not None:
            say(ctx, why, "not_regulated")
        return NOT_APPLICABLE
    stage = deal.stage  # the key of `direction.required` the requirements come from; None when combined below
    requirements = direction.required.get(stage, ())
    if stage == LOST and direction.rules.R2.cumulative:
        run = deal.run
        previous = previous_regulated(run) if run else None
        if previous is not None and previous.stage in direction.order:
            stage = f"{LOST}<{previous.stage}"
            requirements = direction.required[stage]
    elif not direction.rules.R2.cumulative:
        run = deal.run
        previous = previous_regulated(run) if run else None
        if previous is not None and previous.stage in direction.order and deal.stage != previous.stage:
            stage_spec = direction.stages[previous.stage]
            requirements = tuple(requirements) + tuple(getattr(stage_spec, "requires_to_leave", ()))
            stage = None
    if not requirements:
        if why is not None:
            say(ctx, why, "nothing_required", stage=direction.stage_name(deal.stage))
        return NOT_APPLICABLE
    fields = deal.fields
    plain = direction.plain_required.get(stage) if stage is not None else None
    conditioned = direction.conditioned_required.get(stage) if stage is not None else None
    if plain is not None and conditioned is not None:
        # the common case, all fine: the plain "filled and valid" fields by their precomputed ids, then the
        # few that must equal an option; anything else (wrong, or a date that must be in the future) is
        # worked out in full below
        for field_id in plain:
            value = fields.get(field_id)
            if value is None or not value.ok:
                break
        else:
            for field_id, option, future in conditioned:
                value = fields.get(field_id)
                if value is None or not value.ok or future or (option is not None and value.value != option):
                    break
            else:
                if why is not None:
                    say(ctx, why, "fields_filled", fields=", ".join(ctx.regulation.label(r.field) for r in requirements))
                return ()
    missing: list[str] = []
    remarks: dict[str, str] = {}
    for requirement in requirements:
        value = fields.get(requirement.field)
        if value is not None and value.ok and requirement.plain:
            continue  # the common case: filled and valid, no extra condition
        problem = field_problem(deal, requirement, ctx)
        if problem is not None and requirement.field not in remarks:
            missing.append(requirement.field)
            remarks[requirement.field] = problem
    if not missing:
        if why is not None:
            say(ctx, why, "fields_filled", fields=", ".join(ctx.regulation.label(r.field) for r in requirements))
        return ()
    run = deal.run
    entry = run[-1] if run else None
    listed = Text(joined, [("{label} ({remark})", {"label": ctx.regulation.label(field_id), "remark": remarks[field_id]})
                           for field_id in missing])
    found = violation("R2", deal, direction, ctx, since=entry.entered if entry else deal.created, entry=entry,
                      missing=tuple(missing), values={"missing": listed}, details={"problems": remarks})
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R3


_title_keys: dict[str, str] = {}


def stage_task(deal: Deal, title: str, entered: datetime, match: str = "exact", kind: str = TASK, *,
               open_only: bool = False) -> Task | None:
    """The deal's stage task (by the R3 `match` mode), set on or after entering the stage; a completed one wins
    (`open_only`: only one not completed).

    `kind` is the regulation's kind of the stage task: where it asks for a CRM to-do, only to-dos count
    (and only tasks where it asks for a task), so "any" never lets one stand in for the other.
    """
    wanted = _title_keys.get(title)
    if wanted is None:
        wanted = _title_keys[title] = " ".join(title.split()).casefold()
    earliest = entered - TASK_TOLERANCE
    exact, contains = match == "exact", match == "contains"  # decided once, not per task
    best: Task | None = None
    for task in deal.tasks:
        if task.kind != kind:
            continue
        if exact:
            if task.title_key != wanted:
                continue
        elif contains and wanted not in task.title_key:
            continue
        if task.created is None or task.created >= earliest:
            if open_only and task.status is TaskStatus.COMPLETED:
                continue
            if best is None or task.status is TaskStatus.COMPLETED:
                best = task
    return best


def task_in_place(deal: Deal, run: tuple[StageEntry, ...], stage: str, entered: datetime, title: str,
                  match: str = "exact", kind: str = TASK) -> Task | None:
    """The stage task covering the deal's visit to `stage` that began at `entered`: one set since then (any status),
    or one still open that was set during an earlier visit of the stage in the same run. A deal moved back into a
    stage whose task is still open needs no second one; one whose task was completed gets a new open one."""
    found = stage_task(deal, title, entered, match, kind)
    if found is not None:
        return found
    first = next((entry.entered for entry in run if entry.stage == stage), None)
    if first is None or first >= entered:
        return None
    return stage_task(deal, title, first, match, kind, open_only=True)


def check_r3(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R3 Stage task: set when the deal enters a stage; completed before leaving where the regulation says so."""
    run = deal.run
    if not run or deal.stage is None:
        if why is not None:
            say(ctx, why, "no_history" if not run else "not_regulated")
        return NOT_APPLICABLE
    stage_tasks = direction.stage_tasks
    task_spec = stage_tasks.get(deal.stage)
    previous = previous_regulated(run)
    left_task = stage_tasks.get(previous.stage) if previous is not None else None  # type: ignore[arg-type]
    if task_spec is None and left_task is None:
        if why is not None:
            say(ctx, why, "no_stage_task", stage=direction.stage_name(deal.stage))
        return NOT_APPLICABLE
    wording = ctx.regulation.spec.wording
    match = direction.rules.R3.match
    entry = run[-1]
    missing: list[str] = []
    remarks: list[tuple[str, dict[str, str]]] = []
    since = entry.entered
    current = "no_stage_task"  # why it passes, for `audit --deal`: the current stage's part
    if task_spec is not None:
        grace = direction.rules.R3.create_within
        if task_in_place(deal, run, deal.stage, entry.entered, task_spec.title, match, task_spec.kind) is not None:
            current = "task_set"
        elif ctx.reached(entry.entered + grace):
            missing.append(f"task:{task_spec.title}")
            remarks.append((wording.task_missing, {"task": task_spec.title}))
            due = entry.entered + grace
            since = due
        else:
            current = "task_pending"
    moved_forward = left_task is not None and previous.stage in direction.order and (  # type: ignore[union-attr]
        deal.stage == WON or direction.order.get(deal.stage, -1) > direction.order[previous.stage])
    if left_task is not None and left_task.must_complete and moved_forward:
        done = stage_task(deal, left_task.title, previous.entered, match, left_task.kind)
        if done is None or not done.completed or (done.closed is not None and done.closed > entry.entered + TASK_TOLERANCE):
            missing.append(f"task_not_completed:{left_task.title}")
            remarks.append((wording.task_not_completed,
                            {"task": left_task.title, "stage": direction.stage_name(previous.stage)}))
            since = entry.entered
    if not missing:
        if why is not None:
            previous_done = left_task is not None and left_task.must_complete and moved_forward
            if current == "task_set" and previous_done:
                say(ctx, why, "task_done")
            else:
                say(ctx, why, current, stage=direction.stage_name(deal.stage), task=task_spec.title if task_spec else "",
                    deadline=f"{entry.entered + direction.rules.R3.create_within:%Y-%m-%d %H:%M}")
                if previous_done:
                    say(ctx, why, "previous_task_done")
        return ()
    found = violation("R3", deal, direction, ctx, since=since, entry=entry, missing=tuple(missing),
                      values={"missing": Text(joined, remarks), "task": task_spec.title if task_spec else ""},
                      details={"task": task_spec.title if task_spec else None,
                               "left_stage": previous.stage if previous else None})
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R4


def check_r4(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R4 Probability: the deal's probability equals its stage's."""
    if deal.stage is None:
        if why is not None:
            say(ctx, why, "not_regulated")
        return NOT_APPLICABLE
    expected = direction.stages[deal.stage].probability
    if deal.probability == expected:
        if why is not None:
            say(ctx, why, "probability_ok", expected=expected)
        return ()
    run = deal.run
    entry = run[-1] if run else None
    # "50%", or the wording's "not set" (never "not set%"): the template's {actual} carries its own percent sign
    actual: Any = f"{deal.probability}%" if deal.probability is not None else ctx.regulation.spec.wording.not_set
    found = violation("R4", deal, direction, ctx, since=entry.entered if entry else deal.created, entry=entry,
                      missing=("probability",), values={"expected": expected, "actual": actual},
                      details={"expected": expected, "actual": deal.probability})
    if why is not None:
        why.append(found.message)
    return (found,)
