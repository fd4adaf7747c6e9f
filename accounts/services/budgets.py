"""Budget reservations, the usage ledger, threshold warnings.

Before an LLM call the engine reserves the call's worst-case cost against every
applicable budget (``budget_reserve``); after it, ``usage_record`` writes the
ledger row and settles those reservations to the actual figures; a call that
failed before any usage releases them (``budget_release``). Periods are UTC
(``accounts.periods``).

Locking (why concurrent callers cannot pass a limit together): a reservation
is checked and written inside one transaction that first locks the user's row
(``SELECT ... FOR NO KEY UPDATE``), which serialises everything charged to that
user alone (their own budgets and the per-user defaults), then locks each
applicable group budget's row in id order, which serialises a group's shared
pool. Every caller takes the locks in that same order (user, then budgets by
id), so two reservations never deadlock. Default budgets are deliberately not
locked as rows: they count each user separately, and locking them would
serialise every LLM call of every user on one row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts import events
from accounts.errors import BudgetExceeded
from accounts.models import Budget, BudgetReservation, BudgetWarning, UsageRecord, User
from accounts.periods import format_reset, period_bounds
from accounts.selectors import budget_spent, budgets_applicable

USD_QUANTUM = Decimal("0.000000000001")  # 12 decimal places, as stored


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


def _tokens(value: int, *, name: str) -> int:
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
        return f"{budget.period} budget of {format_usd(budget.cost_limit_usd)}"
    return f"{budget.period} budget of {budget.token_limit:,} tokens"


def _owner_label(budget: Budget) -> str:
    if budget.group_id:
        name = getattr(budget, "group_name", None) or budget.group.name
        return f"the group {name}'s"
    return "your"


def _commit_without_wal_flush() -> None:
    """Let this transaction's COMMIT return before its WAL reaches the disk.

    Only for holds: other transactions see the rows at commit either way; a
    database crash may forget the last few hundred milliseconds of holds,
    which is harmless (the call's ``usage_record`` then charges the budgets
    directly). Saves one disk flush per LLM call. The usage ledger keeps
    ordinary durable commits. PostgreSQL only; a no-op elsewhere.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _lock_for_user(*, user_id: int, budgets: list[Budget]) -> list[Budget]:
    """Take the reservation locks (user row, then group budgets by id).

    Call inside ``transaction.atomic``. Returns ``budgets`` with the group
    ones re-read under their lock. On SQLite (embedded mode) the transaction
    itself is the lock (``BEGIN IMMEDIATE``: one writer at a time).
    """
    if connection.vendor != "postgresql":
        return budgets
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {qn(User._meta.db_table)} WHERE {qn('id')} = %s "  # noqa: S608
            "FOR NO KEY UPDATE",
            [user_id],
        )
    shared = [b.pk for b in budgets if b.group_id]
    if not shared:
        return budgets
    marks = ", ".join(["%s"] * len(shared))
    locked = {
        b.pk: b
        for b in Budget.objects.raw(
            f"SELECT t.*, g.{qn('name')} AS group_name FROM {qn(Budget._meta.db_table)} t "  # noqa: S608
            f"JOIN {qn(Group._meta.db_table)} g ON g.{qn('id')} = t.{qn('group_id')} "
            f"WHERE t.{qn('id')} IN ({marks}) AND t.{qn('enabled')} = %s "
            f"ORDER BY t.{qn('id')} FOR NO KEY UPDATE OF t",
            [*shared, True],
        )
    }
    # A group budget deleted or disabled meanwhile no longer applies.
    return [locked[b.pk] if b.group_id else b for b in budgets if not b.group_id or b.pk in locked]


def budget_reserve(
    *,
    user: User | int,
    cost_usd: Decimal | int | str,
    tokens: int,
    run_id: int | None = None,
    _budgets: list[Budget] | None = None,
) -> list[BudgetReservation]:
    """Hold ``cost_usd`` and ``tokens`` against every budget that applies to ``user``.

    All or nothing: in one transaction, for each applicable budget (locks as
    described in this module's docstring), spent = held + settled rows of the
    current period; if ``spent`` already reached a limit, or ``spent + this``
    would pass it (cost or tokens), nothing is held and ``BudgetExceeded`` is
    raised for the first such budget (lowest id). Otherwise one ``held``
    reservation per budget is created. A user with no budget gets ``[]``.

    Args:
        user: the user (or their id) the call is made for.
        cost_usd: the call's worst-case cost in USD (Decimal; prompt tokens x
            input price + max_tokens x output price, computed by the caller).
        tokens: worst-case tokens (prompt + max_tokens).
        run_id: the run making the call, stored for the record.

    Returns:
        The held ``BudgetReservation`` rows, one per applicable budget.

    Raises:
        BudgetExceeded: a limit would be passed; nothing was written.
        ValueError: negative or non-numeric amounts.
    """
    cost = to_usd(cost_usd)
    tokens = _tokens(tokens, name="tokens")
    user_id = user if isinstance(user, int) else user.pk
    budgets = budgets_applicable(user=user_id) if _budgets is None else _budgets
    if not budgets:
        return []
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:  # never relax a caller's own transaction
            _commit_without_wal_flush()
        now = timezone.now()
        budgets = _lock_for_user(user_id=user_id, budgets=budgets)
        spent = budget_spent(budgets=budgets, user_id=user_id, now=now)
        rows = []
        for budget in budgets:
            start, resets_at = period_bounds(budget.period, now=now)
            spent_cost, spent_tokens = spent[budget.pk]
            for kind, limit, used, need in (
                ("cost", budget.cost_limit_usd, spent_cost, cost),
                ("tokens", budget.token_limit, spent_tokens, tokens),
            ):
                if limit is None:
                    continue
                if used >= limit or used + need > limit:
                    message = f"{_limit_label(budget, kind)} reached"
                    if used < limit:
                        used_s = format_usd(used) if kind == "cost" else f"{used:,} tokens"
                        need_s = format_usd(need) if kind == "cost" else f"{need:,} tokens"
                        message += f" ({used_s} used, this call needs up to {need_s})"
                    raise BudgetExceeded(
                        f"{message}; {format_reset(resets_at)}",
                        budget_id=budget.pk,
                        resets_at=resets_at,
                    )
            rows.append(
                BudgetReservation(
                    budget_id=budget.pk,
                    user_id=user_id,
                    run_id=run_id,
                    cost_usd=cost,
                    tokens=tokens,
                    period_start=start,
                    status=BudgetReservation.Status.HELD,
                    created_at=now,
                )
            )
        created = BudgetReservation.objects.bulk_create(rows)
        for row in created:
            # Spend including this hold, as seen now: lets settle skip the
            # threshold query when a warning cannot be due (see usage_record).
            spent_cost, spent_tokens = spent[row.budget_id]
            row.spent_with_hold = (spent_cost + cost, spent_tokens + tokens)
        return created


def budget_release(*, reservation_ids: list[int]) -> int:
    """Release held reservations of a call that made no usage (it failed early).

    Settled and already released rows are left alone, so calling twice is
    harmless. Returns the number of rows released.
    """
    if not reservation_ids:
        return 0
    return BudgetReservation.objects.filter(
        pk__in=reservation_ids, status=BudgetReservation.Status.HELD
    ).update(status=BudgetReservation.Status.RELEASED, settled_at=timezone.now())


def budget_reservations_expire(*, older_than: timedelta = timedelta(hours=1)) -> int:
    """Release reservations held longer than ``older_than`` (a worker died mid-call).

    Run periodically (Celery beat, ``accounts.tasks``). Returns the count released.
    """
    cutoff = timezone.now() - older_than
    return BudgetReservation.objects.filter(
        status=BudgetReservation.Status.HELD, created_at__lt=cutoff
    ).update(status=BudgetReservation.Status.RELEASED, settled_at=timezone.now())


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
    _budgets: list[Budget] | None = None,
    _reserved_budget_ids: list[int] | None = None,
    _spent_hint: dict[int, tuple[Decimal, int, Decimal, int]] | None = None,
) -> UsageRecord:
    """Write one LLM call to the ledger and settle its reservations.

    The given held reservations become ``settled`` with the actual cost and
    tokens (the held estimate no longer counts, the actual usage does). Every
    applicable budget without a settled reservation from this call (none was
    made, or it had been released or expired) gets a settled charge, so
    usage always counts. Then, for each applicable budget whose spend in this
    period reached its ``warn_at_fraction`` and whose user was not yet warned
    this period, a ``BudgetWarning`` is stored and pushed live on commit.

    Args:
        cost_usd: actual cost in USD, stored exactly (Decimal, 12 places;
            a float goes through its repr).
        latency_ms: wall time of the call in milliseconds.
        reservations: ids returned by ``budget_reserve`` for this call.

    Returns:
        The new ``UsageRecord``.

    Raises:
        ValueError: negative or non-numeric tokens or cost, or an empty model.
    """
    cost = to_usd(cost_usd)
    prompt_tokens = _tokens(prompt_tokens, name="prompt_tokens")
    completion_tokens = _tokens(completion_tokens, name="completion_tokens")
    if latency_ms is not None:
        latency_ms = _tokens(latency_ms, name="latency_ms")
    if not model:
        raise ValueError("model must name the model that was called")
    user_id = user if isinstance(user, int) else user.pk
    total = prompt_tokens + completion_tokens
    with transaction.atomic():
        now = timezone.now()
        record = UsageRecord.objects.create(
            user_id=user_id,
            conversation_id=conversation_id,
            run_id=run_id,
            model=model[:200],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_ms=latency_ms,
            created_at=now,
        )
        covered: set[int] = set()
        if reservations:
            settled = BudgetReservation.objects.filter(
                pk__in=reservations, user_id=user_id, status=BudgetReservation.Status.HELD
            ).update(
                status=BudgetReservation.Status.SETTLED,
                cost_usd=cost,
                tokens=total,
                usage=record,
                settled_at=now,
            )
            if _reserved_budget_ids is not None and settled == len(reservations):
                covered = set(_reserved_budget_ids)  # every hold settled: no need to ask
            else:
                covered = set(
                    BudgetReservation.objects.filter(usage=record).values_list(
                        "budget_id", flat=True
                    )
                )
        budgets = budgets_applicable(user=user_id) if _budgets is None else _budgets
        charges = [
            BudgetReservation(
                budget_id=b.pk,
                user_id=user_id,
                run_id=run_id,
                usage=record,
                cost_usd=cost,
                tokens=total,
                period_start=period_bounds(b.period, now=now)[0],
                status=BudgetReservation.Status.SETTLED,
                created_at=now,
                settled_at=now,
            )
            for b in budgets
            if b.pk not in covered
        ]
        if charges:
            BudgetReservation.objects.bulk_create(charges)
        watched = budgets
        if _spent_hint is not None and covered:
            # Budgets whose spend, at admit, plus this call's excess over its
            # hold stays under the threshold need no query. (A concurrent call
            # that pushes past it checks for itself when it settles.)
            watched = [
                b for b in budgets if not _below_threshold(b, _spent_hint.get(b.pk), cost, total)
            ]
        _warn_if_crossed(user_id=user_id, budgets=watched, now=now)
    return record


def _below_threshold(
    budget: Budget,
    hint: tuple[Decimal, int, Decimal, int] | None,
    cost: Decimal,
    tokens: int,
) -> bool:
    """True when ``hint`` (spend with hold, tokens with hold, held cost, held tokens) proves
    the budget is still under its warning threshold after settling ``cost``/``tokens``."""
    if hint is None:
        return False
    spent_cost, spent_tokens, held_cost, held_tokens = hint
    cost_after = spent_cost + max(Decimal(0), cost - held_cost)
    tokens_after = spent_tokens + max(0, tokens - held_tokens)
    if budget.cost_limit_usd is not None and cost_after >= (
        budget.cost_limit_usd * budget.warn_at_fraction
    ):
        return False
    return not (
        budget.token_limit is not None
        and tokens_after >= budget.token_limit * budget.warn_at_fraction
    )


def _warn_if_crossed(*, user_id: int, budgets: list[Budget], now: datetime) -> None:
    """Store and push a warning for each budget past its threshold (once per period)."""
    watched = [
        b
        for b in budgets
        if (b.cost_limit_usd is not None and b.cost_limit_usd > 0)
        or (b.token_limit is not None and b.token_limit > 0)
    ]
    if not watched:
        return
    spent = budget_spent(budgets=watched, user_id=user_id, now=now)
    crossed = []
    for b in watched:
        cost, tokens = spent[b.pk]
        shares = []
        if b.cost_limit_usd:
            shares.append((cost / b.cost_limit_usd, "cost"))
        if b.token_limit:
            shares.append((Decimal(tokens) / Decimal(b.token_limit), "tokens"))
        share, kind = max(shares)
        if share >= b.warn_at_fraction:
            crossed.append((b, share, kind, cost, tokens))
    if not crossed:
        return
    starts = {b.pk: period_bounds(b.period, now=now)[0] for b, *_ in crossed}
    already = set(
        BudgetWarning.objects.filter(
            user_id=user_id, budget_id__in=list(starts), period_start__in=set(starts.values())
        ).values_list("budget_id", "period_start")
    )
    for b, share, kind, cost, tokens in crossed:
        if (b.pk, starts[b.pk]) in already:
            continue
        used = format_usd(cost) if kind == "cost" else f"{tokens:,} tokens"
        resets = format_reset(period_bounds(b.period, now=now)[1])
        message = (
            f"You have used {share:.0%} of {_owner_label(b)} "
            f"{_limit_label(b, kind)} ({used}); {resets}."
        )
        try:
            # A savepoint: a concurrent call may store the same warning first,
            # and that must not undo the usage written above.
            with transaction.atomic():
                warning = BudgetWarning.objects.create(
                    budget=b,
                    user_id=user_id,
                    period_start=starts[b.pk],
                    message=message,
                    created_at=now,
                )
        except IntegrityError:
            continue
        events.budget_warning_push(warning=warning)
