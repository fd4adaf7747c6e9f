"""Budget reservations, the usage ledger, threshold warnings.

Before an LLM call the engine reserves the call's worst-case cost against every
applicable budget (``budget_reserve``); after it, ``usage_record`` writes the
ledger row and settles those reservations to the actual figures; a call that
failed before any usage releases them (``budget_release``). Periods are UTC
(``accounts.periods``).

Approving a tool call holds what it and the run's next model call may cost
(``budget_hold_approved``, kind ``approval``), so that a decision which would
pass a budget is refused before anything runs; admitting that model call
releases those holds first (``budget_release_approved``): its own hold covers
the same call, and counting both would count it twice.

Counting: each (budget, scope, period) has a ``BudgetCounter`` row holding the
running sums of its held and settled reservations; every write here changes a
reservation and its counter in one transaction, so the check reads one row
per budget, whatever the number of calls in the period. A counter is created
at the first charge of its period, starting from the reservation rows already
created in that period (none, unless the budget's period was just changed).

Locking (why concurrent callers cannot pass a limit together): a charge is
checked and written while holding the row lock of every counter it touches
(``SELECT ... FOR NO KEY UPDATE``), so two charges of one counter are
serialised and the second sees the first. Every writer locks reservation rows
(by id) before counters, and counters in (budget id, id) order, so no two
writers deadlock. The same ORM code runs on PostgreSQL and on SQLite (embedded
mode), where the ``BEGIN IMMEDIATE`` transaction is the lock (one writer at a
time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, NamedTuple, cast

from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts import events
from accounts.errors import BudgetExceeded
from accounts.models import (
    Budget,
    BudgetCounter,
    BudgetReservation,
    BudgetWarning,
    RateLimit,
    UsageRecord,
    User,
)
from accounts.periods import format_reset, period_bounds
from accounts.selectors import (
    CounterKey,
    budget_counter_key,
    budget_counter_totals,
    budgets_applicable,
    ratelimits_applicable,
)

USD_QUANTUM = Decimal("0.000000000001")  # 12 decimal places, as stored
HELD = BudgetReservation.Status.HELD
SETTLED = BudgetReservation.Status.SETTLED
RELEASED = BudgetReservation.Status.RELEASED
CALL = BudgetReservation.Kind.CALL
APPROVAL = BudgetReservation.Kind.APPROVAL


def to_usd(value: Decimal | int | float | str, *, name: str = "cost_usd") -> Decimal:
    """Convert to an exact, non-negative USD Decimal with 12 decimal places.

    A float is converted through its shortest ``repr`` (``1.5e-05`` becomes
    ``Decimal("0.000015")``), never through its binary value.

    Raises:
        ValueError: not a number, not finite, or negative.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of US dollars, not a bool")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{name} must be a number of US dollars, got {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if amount < 0:
        raise ValueError(f"{name} cannot be negative, got {value!r}")
    return amount.quantize(USD_QUANTUM, rounding=ROUND_HALF_UP)


def to_tokens(value: int, *, name: str) -> int:
    """Check a whole, non-negative number of tokens. Raises ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} cannot be negative, got {value}")
    return value


def format_usd(amount: Decimal) -> str:
    """``$5.00``; up to 6 decimals when cents would hide the amount (``$0.0025``)."""
    if amount == amount.quantize(Decimal("0.01")) or abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount.quantize(Decimal('0.000001')).normalize():f}"


def _limit_label(budget: Budget, kind: str) -> str:
    if kind == "cost":
        # Not None: callers only label a cost limit that is set.
        return f"{budget.period} budget of {format_usd(cast(Decimal, budget.cost_limit_usd))}"
    return f"{budget.period} budget of {budget.token_limit:,} tokens"


def _owner_label(budget: Budget) -> str:
    if budget.group_id:
        # group_id is set, so the (non-null, CASCADE) foreign key loads a Group.
        name = getattr(budget, "group_name", None) or cast(Group, budget.group).name
        return f"the group {name}'s"
    return "your"


def _counters_lock(
    *, keys: list[CounterKey], ids: list[int] | None = None
) -> dict[CounterKey, BudgetCounter]:
    """Create the counters of ``keys`` that do not exist, then lock them and ``ids``.

    Call inside ``transaction.atomic``, after locking any reservation rows.
    A new counter starts from the reservation rows already created in its
    period (``budget_counter_totals``). Locks are taken in (budget id, id)
    order. Returns the locked counters by key (``ids`` ones included).
    """
    wanted = sorted(set(keys), key=lambda k: (k[0], k[1], k[2]))
    if wanted:
        cond = Q()
        for budget_id, scope, start in wanted:
            cond |= Q(budget_id=budget_id, scope_user_id=scope, period_start=start)
        existing = set(
            BudgetCounter.objects.filter(cond).values_list(
                "budget_id", "scope_user_id", "period_start"
            )
        )
        missing = [k for k in wanted if k not in existing]
        if missing:
            totals = budget_counter_totals(keys=missing)
            BudgetCounter.objects.bulk_create(
                [
                    BudgetCounter(
                        budget_id=budget_id,
                        scope_user_id=scope,
                        period_start=start,
                        spent_usd=totals[(budget_id, scope, start)][0],
                        spent_tokens=totals[(budget_id, scope, start)][1],
                        held_usd=totals[(budget_id, scope, start)][2],
                        held_tokens=totals[(budget_id, scope, start)][3],
                    )
                    for budget_id, scope, start in missing
                ],
                ignore_conflicts=True,  # a concurrent first charge created it
            )
    else:
        cond = Q(pk__in=[])
    if ids:
        cond |= Q(pk__in=ids)
    locked = (
        BudgetCounter.objects.select_for_update(no_key=True)
        .filter(cond)
        .order_by("budget_id", "id")
    )
    return {(c.budget_id, c.scope_user_id, c.period_start): c for c in locked}


def _counter_add(
    counter: BudgetCounter, *, held: tuple[Decimal, int], spent: tuple[Decimal, int]
) -> None:
    """Add to a locked counter, in the database and on the instance."""
    BudgetCounter.objects.filter(pk=counter.pk).update(
        held_usd=F("held_usd") + held[0],
        held_tokens=F("held_tokens") + held[1],
        spent_usd=F("spent_usd") + spent[0],
        spent_tokens=F("spent_tokens") + spent[1],
    )
    counter.held_usd += held[0]
    counter.held_tokens += held[1]
    counter.spent_usd += spent[0]
    counter.spent_tokens += spent[1]


def _refusal(
    budget: Budget, kind: str, used: Decimal | int, need: Decimal | int, *, now: datetime
) -> BudgetExceeded:
    resets_at = period_bounds(budget.period, now=now)[1]
    # Not None: the caller (``_reserve_locked``) only refuses against a set limit.
    limit = cast("Decimal | int", budget.cost_limit_usd if kind == "cost" else budget.token_limit)
    message = f"{_limit_label(budget, kind)} reached"
    if used < limit:
        # A cost refusal passes USD Decimals, a token one ints.
        used_s = format_usd(cast(Decimal, used)) if kind == "cost" else f"{used:,} tokens"
        need_s = format_usd(cast(Decimal, need)) if kind == "cost" else f"{need:,} tokens"
        message += f" ({used_s} used, this call needs up to {need_s})"
    return BudgetExceeded(
        f"{message}; {format_reset(resets_at)}", budget_id=budget.pk, resets_at=resets_at
    )


def _reserve_locked(
    *,
    user_id: int,
    budgets: list[Budget],
    cost: Decimal,
    tokens: int,
    run_id: int | None,
    now: datetime,
    reservation_kind: str = CALL,
) -> list[BudgetReservation]:
    """The general reservation: lock the counters, check in Python, hold. Inside atomic."""
    keys = {b.pk: budget_counter_key(budget=b, user_id=user_id, now=now) for b in budgets}
    counters = _counters_lock(keys=list(keys.values()))
    for budget in budgets:
        counter = counters[keys[budget.pk]]
        for kind, limit, used, need in (
            ("cost", budget.cost_limit_usd, counter.spent_usd + counter.held_usd, cost),
            ("tokens", budget.token_limit, counter.spent_tokens + counter.held_tokens, tokens),
        ):
            if limit is not None and (used >= limit or used + need > limit):
                raise _refusal(budget, kind, used, need, now=now)
    rows = []
    for budget in budgets:
        counter = counters[keys[budget.pk]]
        _counter_add(counter, held=(cost, tokens), spent=(Decimal(0), 0))
        rows.append(
            BudgetReservation(
                budget_id=budget.pk,
                user_id=user_id,
                run_id=run_id,
                cost_usd=cost,
                tokens=tokens,
                period_start=counter.period_start,
                counter=counter,
                status=HELD,
                kind=reservation_kind,
                created_at=now,
            )
        )
    return BudgetReservation.objects.bulk_create(rows)


def budget_admit(
    *,
    user_id: int,
    cost: Decimal,
    tokens: int,
    run_id: int | None,
    check: Callable[[list[RateLimit]], None] | None = None,
    kind: str = CALL,
) -> tuple[list[Budget], list[RateLimit], list[BudgetReservation]]:
    """Reserve like ``budget_reserve``, running ``check`` before the hold commits.

    ``check`` gets the applicable rate limits (by id) and may raise: then
    nothing is held. Returns ``(budgets, rate limits, held reservations)``
    (the rate limits are ``[]`` when ``check`` is None). ``cost`` must come
    from ``to_usd`` and ``tokens`` be checked by the caller; ``kind`` is the
    reservations' ``BudgetReservation.Kind``.

    Raises:
        BudgetExceeded: a limit would be passed; nothing was written.
    """
    now = timezone.now()
    ratelimits = ratelimits_applicable(user=user_id) if check is not None else []
    budgets = budgets_applicable(user=user_id)
    if not budgets:  # nothing to hold: no transaction (nor a caller's savepoint) to open
        if check is not None:
            check(ratelimits)
        return budgets, ratelimits, []
    with transaction.atomic():  # a savepoint in a caller's transaction: a refusal undoes it
        reservations = _reserve_locked(
            user_id=user_id,
            budgets=budgets,
            cost=cost,
            tokens=tokens,
            run_id=run_id,
            now=now,
            reservation_kind=kind,
        )
        if check is not None:
            check(ratelimits)
    return budgets, ratelimits, reservations


def budget_reserve(
    *,
    user: User | int,
    cost_usd: Decimal | int | str,
    tokens: int,
    run_id: int | None = None,
) -> list[BudgetReservation]:
    """Hold ``cost_usd`` and ``tokens`` against every budget that applies to ``user``.

    All or nothing: in one transaction, for each applicable budget (locks as
    described in this module's docstring), spent = held + settled amounts of
    the current period (its counter); if ``spent`` already reached a limit,
    or ``spent + this`` would pass it (cost or tokens), nothing is held and
    ``BudgetExceeded`` is raised for the first such budget (lowest id).
    Otherwise one ``held`` reservation per budget is created and added to its
    counter. A user with no budget gets ``[]``.

    Args:
        user: the user (or their id) the call is made for.
        cost_usd: the call's worst-case cost in USD (Decimal; prompt tokens x
            input price + max_tokens x output price, computed by the caller).
        tokens: worst-case tokens (prompt + max_tokens).
        run_id: the run making the call, stored for the record.

    Returns:
        The held ``BudgetReservation`` rows, one per applicable budget, by budget id.

    Raises:
        BudgetExceeded: a limit would be passed; nothing was written.
        ValueError: negative or non-numeric amounts.
    """
    cost = to_usd(cost_usd)
    tokens = to_tokens(tokens, name="tokens")
    user_id = user if isinstance(user, int) else user.pk
    return budget_admit(user_id=user_id, cost=cost, tokens=tokens, run_id=run_id)[2]


def budget_hold_approved(
    *,
    user: User | int,
    run_id: int | None,
    cost_usd: Decimal | int | str,
    next_call_cost_usd: Decimal | int | str,
    next_call_tokens: int,
) -> list[BudgetReservation]:
    """Hold, before an approved tool call runs, what it and the run's next model call
    may cost, against every budget that applies to ``user`` (who asked for the call).

    The hold is ``cost_usd`` (the call's own cost) plus the next model call's worst
    case (``next_call_cost_usd``, ``next_call_tokens``), unless an earlier approval
    hold of ``run_id`` already covers that model call: the calls of one turn are
    followed by one model call, however many of them people approve. Checked and
    written as ``budget_reserve`` does (all or nothing), as reservations of kind
    ``approval``; nothing left to hold (all zero) holds nothing and refuses
    nothing. ``budget_release_approved`` releases them when the model call is
    admitted; ``budget_reservations_expire`` when it never is.

    Precondition: the caller serialises the holds of one run (approvals decides
    with the run's row locked), so two approvals cannot both miss each other's
    hold of the model call.

    Returns:
        The held reservations (``[]``: nothing to hold, or no budget applies).

    Raises:
        BudgetExceeded: a limit would be passed; nothing was written.
        ValueError: negative or non-numeric amounts.
    """
    cost = to_usd(cost_usd)
    call_cost = to_usd(next_call_cost_usd, name="next_call_cost_usd")
    call_tokens = to_tokens(next_call_tokens, name="next_call_tokens")
    if (
        run_id is not None
        and (call_cost or call_tokens)
        and BudgetReservation.objects.filter(run_id=run_id, kind=APPROVAL, status=HELD).exists()
    ):
        call_cost, call_tokens = Decimal(0), 0
    if not cost and not call_cost and not call_tokens:
        return []
    user_id = user if isinstance(user, int) else user.pk
    return budget_admit(
        user_id=user_id,
        cost=cost + call_cost,
        tokens=call_tokens,
        run_id=run_id,
        kind=APPROVAL,
    )[2]


def budget_release_approved(*, run_id: int) -> int:
    """Release the approval holds of run ``run_id`` (``budget_hold_approved``): its
    next model call is being admitted, and that call's own hold replaces them.

    Call in the admission's transaction, before the call is reserved, after the
    run's row lock (the lock order: reservations, then counters). Returns the
    number of rows released; a run without approval holds costs one indexed read.
    """
    # In front of every model call: no savepoint (two more round trips) for a
    # release that refuses nothing; an error rolls the caller back with it.
    return _release(reservations=Q(run_id=run_id, kind=APPROVAL), savepoint=False)


def _release(*, reservations: Q, savepoint: bool = True) -> int:
    """Release the held reservations matching ``reservations`` and their counters' holds."""
    with transaction.atomic(savepoint=savepoint):
        rows = list(
            BudgetReservation.objects.select_for_update(no_key=True)
            .filter(reservations, status=HELD)
            .order_by("id")
            .only("id", "counter_id", "cost_usd", "tokens")
        )
        if not rows:
            return 0
        BudgetReservation.objects.filter(pk__in=[r.pk for r in rows]).update(
            status=RELEASED, settled_at=timezone.now()
        )
        held: dict[int, list] = defaultdict(lambda: [Decimal(0), 0])
        for r in rows:
            if r.counter_id is not None:
                held[r.counter_id][0] += r.cost_usd
                held[r.counter_id][1] += r.tokens
        for counter in _counters_lock(keys=[], ids=list(held)).values():
            cost, tokens = held[counter.pk]
            _counter_add(counter, held=(-cost, -tokens), spent=(Decimal(0), 0))
        return len(rows)


def budget_release(*, reservation_ids: list[int]) -> int:
    """Release held reservations of a call that made no usage (it failed early).

    Their holds leave the budgets' counters. Settled and already released rows
    are left alone, so calling twice is harmless. Returns the number of rows
    released.
    """
    if not reservation_ids:
        return 0
    return _release(reservations=Q(pk__in=reservation_ids))


def budget_reservations_expire(*, older_than: timedelta = timedelta(hours=1)) -> int:
    """Release reservations held longer than ``older_than`` (a worker died mid-call).

    Run periodically (Celery beat, ``accounts.tasks``). Returns the count released.
    """
    return _release(reservations=Q(created_at__lt=timezone.now() - older_than))


class _Usage(NamedTuple):
    """A call's usage, checked: the ``UsageRecord`` fields and what settling needs."""

    fields: dict[str, Any]
    total: int
    budgets: list[Budget]
    reservations: list[int]
    now: datetime


def _usage(
    *,
    user: User | int,
    conversation_id: int | None,
    run_id: int | None,
    evaluation_id: int | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: Decimal | int | str,
    latency_ms: int | None,
    reservations: list[int] | None,
    budgets: list[Budget] | None,
) -> _Usage:
    cost = to_usd(cost_usd)
    prompt_tokens = to_tokens(prompt_tokens, name="prompt_tokens")
    completion_tokens = to_tokens(completion_tokens, name="completion_tokens")
    if latency_ms is not None:
        latency_ms = to_tokens(latency_ms, name="latency_ms")
    if not model:
        raise ValueError("model must name the model that was called")
    user_id = user if isinstance(user, int) else user.pk
    now = timezone.now()
    fields = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "run_id": run_id,
        "evaluation_id": evaluation_id,
        "model": model[:200],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost,
        "latency_ms": latency_ms,
        "created_at": now,
    }
    return _Usage(
        fields=fields,
        total=prompt_tokens + completion_tokens,
        budgets=budgets_applicable(user=user_id) if budgets is None else budgets,
        reservations=list(reservations or []),
        now=now,
    )


def usage_record(
    *,
    user: User | int,
    conversation_id: int | None,
    run_id: int | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: Decimal | int | str,
    latency_ms: int | None,
    reservations: list[int] | None = None,
    evaluation_id: int | None = None,
    _budgets: list[Budget] | None = None,
) -> UsageRecord:
    """Write one LLM call to the ledger and settle its reservations.

    The given held reservations become ``settled`` with the actual cost and
    tokens (the held estimate no longer counts, the actual usage does; on the
    counters, the hold moves to spent). Every applicable budget without a
    settled reservation from this call (none was made, or it had been
    released or expired) gets a settled charge in the current period, so
    usage always counts. Then, for each applicable budget whose spend in this
    period reached its ``warn_at_fraction`` and whose user was not yet warned
    this period, a ``BudgetWarning`` is stored and pushed live on commit.
    The commit is durable (the ledger is money).

    Args:
        cost_usd: actual cost in USD, stored exactly (Decimal, 12 places;
            a float goes through its repr).
        latency_ms: wall time of the call in milliseconds.
        reservations: ids returned by ``budget_reserve`` for this call.
        evaluation_id: the prompt evaluation that made the call (plain id), if any.

    Returns:
        The new ``UsageRecord``.

    Raises:
        ValueError: negative or non-numeric tokens or cost, or an empty model.
    """
    usage = _usage(
        user=user, conversation_id=conversation_id, run_id=run_id,
        evaluation_id=evaluation_id, model=model,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost_usd,
        latency_ms=latency_ms, reservations=reservations, budgets=_budgets,
    )  # fmt: skip
    fields, user_id, budgets, now = usage.fields, usage.fields["user_id"], usage.budgets, usage.now
    cost, total = usage.fields["cost_usd"], usage.total
    # No savepoint in a caller's transaction: nothing here is refused after a write,
    # and an error must roll the caller's write (the stored answer) back with it.
    with transaction.atomic(savepoint=False):
        record = UsageRecord.objects.create(**fields)
        if not budgets and not reservations:
            return record  # nothing held, nothing to charge: the ledger row is all
        held = list(
            BudgetReservation.objects.select_for_update(no_key=True)
            .filter(pk__in=list(reservations or []), user_id=user_id, status=HELD)
            .order_by("id")
            .only("id", "budget_id", "counter_id", "cost_usd", "tokens")
        )
        if held:
            BudgetReservation.objects.filter(pk__in=[r.pk for r in held]).update(
                status=SETTLED, cost_usd=cost, tokens=total, usage=record, settled_at=now
            )
        covered = {r.budget_id for r in held}
        uncovered = [b for b in budgets if b.pk not in covered]
        charge_keys = {
            b.pk: budget_counter_key(budget=b, user_id=user_id, now=now) for b in uncovered
        }
        counters = _counters_lock(
            keys=list(charge_keys.values()),
            ids=[r.counter_id for r in held if r.counter_id is not None],
        )
        by_id = {c.pk: c for c in counters.values()}
        spends: list[tuple[Budget, tuple[datetime, Decimal, int] | None]] = []
        settled_counter = {}
        for r in held:
            counter = by_id.get(r.counter_id) if r.counter_id is not None else None
            if counter is not None:
                _counter_add(counter, held=(-r.cost_usd, -r.tokens), spent=(cost, total))
                settled_counter[r.budget_id] = counter
        charges = []
        for b in uncovered:
            counter = counters[charge_keys[b.pk]]
            _counter_add(counter, held=(Decimal(0), 0), spent=(cost, total))
            settled_counter[b.pk] = counter
            charges.append(
                BudgetReservation(
                    budget_id=b.pk,
                    user_id=user_id,
                    run_id=run_id,
                    usage=record,
                    cost_usd=cost,
                    tokens=total,
                    period_start=counter.period_start,
                    counter=counter,
                    status=SETTLED,
                    created_at=now,
                    settled_at=now,
                )
            )
        if charges:
            BudgetReservation.objects.bulk_create(charges)
        for b in budgets:
            c = settled_counter.get(b.pk)
            spends.append(
                (
                    b,
                    None
                    if c is None
                    else (c.period_start, c.spent_usd + c.held_usd, c.spent_tokens + c.held_tokens),
                )
            )
        _warn_if_crossed(user_id=user_id, spends=spends, now=now)
    return record


def _warn_if_crossed(
    *,
    user_id: int,
    spends: list[tuple[Budget, tuple[datetime, Decimal, int] | None]],
    now: datetime,
) -> None:
    """Store and push a warning for each budget past its threshold (once per period).

    ``spends`` pairs each budget with its counter after this call:
    ``(period start, USD, tokens)`` including holds, or None. A counter of an
    earlier period (a call reserved before the reset) warns no one.
    """
    for b, spend in spends:
        if spend is None:
            continue
        start, cost, tokens = spend
        current_start, resets_at = period_bounds(b.period, now=now)
        if start != current_start:
            continue
        shares = []
        if b.cost_limit_usd:
            shares.append((cost / b.cost_limit_usd, "cost"))
        if b.token_limit:
            shares.append((Decimal(tokens) / Decimal(b.token_limit), "tokens"))
        if not shares:
            continue
        share, kind = max(shares)
        if share < b.warn_at_fraction:
            continue
        used = format_usd(cost) if kind == "cost" else f"{tokens:,} tokens"
        message = (
            f"You have used {share:.0%} of {_owner_label(b)} "
            f"{_limit_label(b, kind)} ({used}); {format_reset(resets_at)}."
        )
        warning = _warning_store_once(
            budget=b, user_id=user_id, period_start=start, message=message, now=now
        )
        if warning is not None:
            events.budget_warning_push(warning=warning)


def _warning_store_once(
    *, budget: Budget, user_id: int, period_start: datetime, message: str, now: datetime
) -> BudgetWarning | None:
    """Insert the period's warning unless it exists (one statement, no error on a race)."""
    qn = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(BudgetWarning._meta.db_table)} "  # noqa: S608 - quoted identifiers and %s only
            f"({qn('budget_id')}, {qn('user_id')}, {qn('period_start')}, {qn('message')}, "
            f"{qn('created_at')}) VALUES (%s, %s, %s, %s, %s) "
            f"ON CONFLICT ({qn('budget_id')}, {qn('user_id')}, {qn('period_start')}) DO NOTHING "
            f"RETURNING {qn('id')}",
            [budget.pk, user_id, adapt(period_start), message[:300], adapt(now)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    warning = BudgetWarning(
        id=row[0],
        budget=budget,
        user_id=user_id,
        period_start=period_start,
        message=message[:300],
        created_at=now,
    )
    warning._state.adding = False
    return warning
