"""Benchmark 12: streams per core, with the load generator isolated from Tollgate.

The concurrency benchmark (3) runs the provider, the WebSocket clients and
Tollgate on the same cores, so at high levels it measures the load generator.
Here each side gets its own CPU (``os.sched_setaffinity`` on every thread of
every process; threads started later inherit it): Tollgate (daphne, one
Celery worker with the concurrency the stack uses, beat) on CPU 0, the load
generator (llmock and this process, which holds the WebSocket clients) on
CPU 1. PostgreSQL and Redis are the machine's shared services and are not
pinned. The ramp: 25, 50, 100, 150, 200 conversations at once, each a
60-token reply at 50 tokens/s (llmock's ``chat`` provider, 20 ms a chunk).
Per level: streams streaming at once (peak), frame gap p50/p99, TTFT p50/p99,
errors, Tollgate's CPU (web + worker) per reply, and whether the load
generator kept up (its CPU below its one core over the level's wall time).

Then the CPU to read one reply, in this process: a bare httpx SSE read
(baseline), the OpenAI SDK, Tollgate's gateway, litellm's stream wrapper
(``bench/concurrency.py``'s table), and Tollgate end to end per reply from
the ramp's first level. Last, the same ramp with a second worker process on
CPU 1 (sharing it with the load generator): streams sustained with 2 workers
over 1.

    DATABASE_URL=... BENCH_REDIS_URL=... uv run python bench/scale.py \\
        [--levels 25,50,100,150,200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.concurrency import MODEL, TOKENS, _gateway_cpu, _level
from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, percentile, table, words

LEVELS = [25, 50, 100, 150, 200]
TOLLGATE_CPU = 0
LOADGEN_CPU = 1
#: p99 frame gap a level must stay within to count as sustained (ms).
GAP_TARGET_MS = 250.0
#: The load generator kept up while it used less than this share of its core.
LOADGEN_CEILING = 0.9


def pin(pid: int, cpus: set[int], *, children: bool = True) -> set[int]:
    """Pin every thread of process ``pid`` (and, with ``children``, of its child
    processes) to ``cpus``; threads they start later inherit it. Returns the CPUs
    ``pid``'s main thread may now use. Raises ``OSError`` if a CPU does not exist."""
    import psutil

    root = psutil.Process(pid)
    for proc in [root, *(root.children(recursive=True) if children else [])]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for thread in proc.threads():
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(thread.id, cpus)
    return os.sched_getaffinity(pid)


def _loadgen_pids(env: BenchEnv) -> dict[str, int]:
    """The load generator: this process (the clients) and the llmock servers."""
    pids = {"clients": os.getpid()}
    pids.update({f"llmock {n}": p.process.pid for n, p in env.providers.items() if p.process})
    return pids


def place(env: BenchEnv, placement: dict[str, int]) -> str:
    """Pin each stack process named in ``placement`` to its CPU, the load generator
    to ``LOADGEN_CPU``; one line saying which CPUs each now uses."""
    used = {}
    for name, cpu in placement.items():
        used[name] = pin(env.pid(name), {cpu})
    for name, pid in _loadgen_pids(env).items():
        used[name] = pin(pid, {LOADGEN_CPU}, children=name != "clients")
    return ", ".join(
        f"{name} on CPU {','.join(map(str, sorted(cpus)))}" for name, cpus in used.items()
    )


def unpin(env: BenchEnv) -> None:
    """Every process of the stack and the load generator back on every CPU."""
    every = set(range(os.cpu_count() or 1))
    for name in list(env.stack.processes):
        pin(env.pid(name), every)
    for name, pid in _loadgen_pids(env).items():
        pin(pid, every, children=name != "clients")


def postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each PostgreSQL backend serving
    ``database`` (their process title names it), by pid."""
    import psutil

    out = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("postgres: ") and f" {database} " in title:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
    return out


def postgres_cpu_since(database: str, before: dict[int, float]) -> float:
    """CPU seconds the backends of ``database`` used since ``before`` (``postgres_cpu``):
    new backends count whole, backends that ended in between are not counted."""
    now = postgres_cpu(database)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())


def _row(level: int, data: dict) -> tuple[list[str], dict[str, Any]]:
    """A table row for one level and its figures (``sustained``, CPU per reply...)."""
    gaps, ttft, cpu = data["gaps"], data["ttft"], data["cpu"]
    workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
    tollgate = cpu.get("web", 0.0) + workers
    loadgen = cpu.get("provider", 0.0) + cpu.get("client", 0.0)
    # The level's wall time: the first send to the last stream's end.
    loadgen_share = loadgen / data["wall"] if data["wall"] == data["wall"] else float("nan")
    # What the rest of the machine (other people's work) used meanwhile, as a share of
    # both CPUs: it shares Tollgate's CPU too (only our processes are pinned).
    ours = tollgate + loadgen + cpu.get("beat", 0.0) + data["postgres"]
    cores = os.cpu_count() or 1
    others = max(0.0, data["busy"] - ours) / (data["busy_wall"] * cores)
    gap99 = percentile(gaps, 0.99)
    figures = {
        "gap99": gap99,
        "errors": len(data["errors"]),
        "peak": data["peak"],
        "cpu_ms": tollgate / level * 1000,
        "kept_up": loadgen_share < LOADGEN_CEILING,
        "workers": {k: v for k, v in cpu.items() if k.startswith("worker")},
    }
    figures["sustained"] = (
        gap99 <= GAP_TARGET_MS and not data["errors"] and data["peak"] >= 0.9 * level
    )
    row = [
        str(level),
        str(data["peak"]),
        fmt(p50(gaps), 0),
        fmt(gap99, 0),
        fmt(p50(ttft), 0),
        fmt(percentile(ttft, 0.99), 0),
        str(len(data["errors"])),
        f"{fmt(figures['cpu_ms'], 1)} ({fmt(cpu.get('web', 0.0) / level * 1000, 1)} / "
        f"{fmt(workers / level * 1000, 1)})",
        fmt(data["postgres"] / level * 1000, 1),
        f"{loadgen_share * 100:.0f}% ({'yes' if figures['kept_up'] else 'no'})",
        f"{others * 100:.0f}%",
        "yes" if figures["sustained"] else "no",
    ]
    return row, figures


@contextlib.contextmanager
def profiled(env: BenchEnv, names: list[str], out: Path | None) -> Iterator[None]:
    """py-spy (``--nonblocking``, 200 Hz, only threads holding the GIL: where the CPU
    goes, not the waits; raw collapsed stacks) on each stack process in ``names``
    while the block runs, one ``<out>-<name>.txt`` each; nothing if
    ``out`` is ``None``. py-spy is this process's child, so it runs on its CPU."""
    if out is None:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in names:
        argv = [str(spy), "record", "--nonblocking", "--gil", "-r", "200", "-f", "raw",
                "-p", str(env.pid(name)), "-o", f"{out}-{name}.txt"]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in procs:
            proc.wait(timeout=60)


async def _ramp(
    env: BenchEnv,
    config: Any,
    levels: list[int],
    wait: float,
    label: str,
    profile: tuple[int, Path] | None = None,
) -> tuple[list[list[str]], list[dict[str, Any]], list[str]]:
    rows, figures, errors = [], [], []
    for level in levels:
        out = profile[1] if profile and profile[0] == level else None
        database = env.database_url.rsplit("/", 1)[-1]
        with profiled(env, [n for n in env.stack.processes if n != "beat"], out):
            before = postgres_cpu(database)
            data = await _level(env, config, level, wait)
            data["postgres"] = postgres_cpu_since(database, before)
        row, fig = _row(level, data)
        print(f"  {label} {level}: {' | '.join(row)}", flush=True)
        rows.append([label, *row])
        figures.append({"level": level, **fig})
        if data["errors"]:
            errors.append(f"{label} {level}: " + ", ".join(sorted(set(data["errors"]))))
        await asyncio.sleep(1.0)  # let the last runs' finishing writes settle
    return rows, figures, errors


async def _paced_httpx_cpu(env: BenchEnv, streams: int) -> float:
    """CPU ms per reply of ``streams`` bare httpx SSE reads of the paced provider at
    once (one ``json.loads`` per chunk): the same stream shape Tollgate relays."""
    import json

    import httpx

    url = env.providers["chat"].base_url + "/chat/completions"
    payload = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    async def read(http: httpx.AsyncClient) -> None:
        async with http.stream(
            "POST", url, json=payload, headers={"Authorization": "Bearer bench-key"}
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    json.loads(line[6:])

    limits = httpx.Limits(max_connections=streams + 5)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await read(http)  # warm-up
        started = time.process_time()
        await asyncio.gather(*(read(http) for _ in range(streams)))
        return (time.process_time() - started) / streams * 1000


def sustained(figures: list[dict[str, Any]]) -> int:
    """The highest level sustained (p99 gap ≤ 250 ms, 0 errors, ≥ 90% streaming at
    once), 0 if none; a level after a failed one does not count."""
    best = 0
    for fig in figures:
        if not fig["sustained"]:
            break
        best = fig["level"]
    return best


async def _measure(
    env: BenchEnv, levels: list[int], wait: float, quick: bool, profile: tuple[int, Path] | None
) -> Result:
    from asgiref.sync import sync_to_async

    env.providers["chat"].reply(model=MODEL, text=words(TOKENS))
    config = await sync_to_async(env.model)(MODEL, provider="chat")
    one = place(env, {"web": TOLLGATE_CPU, "worker": TOLLGATE_CPU, "beat": TOLLGATE_CPU})
    print(f"one worker: {one}", flush=True)
    await _level(env, config, 2, wait)  # warm-up: connections, imports, caches
    rows, figures, errors = await _ramp(env, config, levels, wait, "1 worker", profile)

    paced_ms = await _paced_httpx_cpu(env, levels[0])
    gateway, _ = await _gateway_cpu(env, streams=3 if quick else 30)
    unpaced_ms = float(gateway[0][1])
    e2e_ms = figures[0]["cpu_ms"]
    cpu_rows = [
        *gateway,
        [
            f"httpx, one json.loads per chunk, {levels[0]} paced streams at once "
            "(50 tokens/s, as Tollgate relays them)",
            fmt(paced_ms, 2),
            fmt(paced_ms / unpaced_ms, 1) + "x",
        ],
        [
            f"Tollgate end to end: web + worker CPU per reply at {levels[0]} at once (paced)",
            fmt(e2e_ms, 2),
            fmt(e2e_ms / unpaced_ms, 1) + "x",
        ],
    ]

    env.stack.start_worker(name="worker2")
    try:
        env.stack.wait_for_log("worker2", " ready.", timeout=120)
        two = place(
            env,
            {"web": TOLLGATE_CPU, "worker": TOLLGATE_CPU, "beat": TOLLGATE_CPU,
             "worker2": LOADGEN_CPU},
        )  # fmt: skip
        print(f"two workers: {two}", flush=True)
        await _level(env, config, 2, wait)  # warm-up of the second worker
        rows2, figures2, errors2 = await _ramp(env, config, levels, wait, "2 workers")
    finally:
        env.stack.kill("worker2", 15)
        unpin(env)

    best1, best2 = sustained(figures), sustained(figures2)
    ratio = f"{best2 / best1:.1f}x" if best1 else "n/a (1 worker sustained none)"
    at = {f["level"]: f for f in figures}
    shares = [
        f"{f['level']}: " + " / ".join(f"{v:.1f}" for v in f["workers"].values()) for f in figures2
    ]
    top_ok = [f for f in figures if f["level"] >= 100]
    at_100 = (
        f" (at 100: p99 gap {fmt(at[100]['gap99'], 0)} ms, {at[100]['errors']} errors, "
        f"{at[100]['peak']} at once)"
        if 100 in at
        else ""
    )
    checks = [
        (
            "≥ 100 concurrent streams on one core, p99 frame gap ≤ 250 ms, 0 errors",
            f"highest level sustained: {best1 or 'none'}{at_100}",
            best1 >= 100 if top_ok else None,
        ),
        (
            "Tollgate CPU per reply ≤ 2.5x the bare httpx read",
            f"{fmt(e2e_ms, 1)} ms = {e2e_ms / unpaced_ms:.1f}x the unpaced read "
            f"({fmt(unpaced_ms, 1)} ms), {e2e_ms / paced_ms:.1f}x the paced one "
            f"({fmt(paced_ms, 1)} ms)",
            e2e_ms <= 2.5 * unpaced_ms,
        ),
    ]
    headers = [
        "workers",
        "streams",
        "streaming at once (peak)",
        "frame gap p50 ms",
        "frame gap p99 ms",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "errors",
        "Tollgate CPU ms/reply (web / workers)",
        "PostgreSQL CPU ms/reply",
        "load generator CPU of its core (kept up)",
        "other work on the machine",
        "sustained",
    ]
    return Result(
        key="scale",
        title=f"12. Streams per core, load generator isolated ({TOKENS} tokens at 50 tokens/s)",
        table=table(headers, rows + rows2)
        + f"\n\nCPU to read one {TOKENS}-chunk reply, in the load generator's process "
        "(unpaced llmock unless said; Tollgate idle on its own CPU):\n\n"
        + table(["read with", "CPU ms per reply", "/ baseline"], cpu_rows),
        notes=[
            f"Placement, 1 worker: {one}. Placement, 2 workers: {two}: the second worker "
            "shares CPU 1 with the load generator. PostgreSQL and Redis are the machine's "
            "services, on either CPU, shared with other work, and not counted in Tollgate's "
            "CPU; the PostgreSQL column is the CPU of this stack's database backends over the "
            "level, its setup (users, conversations) included (backends that ended during "
            "it are not counted). 'Other work on the "
            "machine': the CPU the machine spent busy during the level less what this "
            "benchmark's processes and backends used, as a share of all CPUs (other people's "
            "tests share this machine, and Tollgate's CPU with it: only ours are pinned).",
            f"Headline: one worker on one core sustains {best1 or 'none'} concurrent streams "
            f"(p99 frame gap ≤ {GAP_TARGET_MS:.0f} ms, 0 errors, ≥ 90% of them streaming at "
            f"once); two workers sustain {best2 or 'none'}: {ratio}.",
            "Tollgate CPU per reply is the web's and the worker(s)' CPU seconds over the "
            "level, divided by its replies. The load generator (llmock and the clients) kept "
            f"up when it used under {LOADGEN_CEILING * 100:.0f}% of its core over the level's "
            "wall time (first send to last end).",
            "CPU seconds of worker / worker2 per level with 2 workers (how the broker shared "
            "the runs): " + "; ".join(shares) + ".",
            *(["Errors: " + "; ".join(errors + errors2)] if errors or errors2 else []),
        ],
        checks=checks,
    )


def measure(
    env: BenchEnv,
    *,
    quick: bool = False,
    levels: list[int] | None = None,
    profile: tuple[int, Path] | None = None,
) -> Result:
    """Run the ramps on ``env`` (see the module docstring); ``quick``: levels 2 and 3.

    ``profile``: ``(level, path prefix)``: py-spy the web and the worker during that
    level of the one-worker ramp (``profiled``). Raises ``OSError`` on a machine
    with fewer than 2 CPUs (nothing to isolate)."""
    if (os.cpu_count() or 1) < 2:
        raise OSError("the isolated benchmark needs 2 CPUs")
    levels = [2, 3] if quick else (levels or LEVELS)
    return asyncio.run(_measure(env, levels, 60 if quick else 180, quick, profile))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--quick", action="store_true", help="levels 2 and 3 (a smoke run)")
    parser.add_argument(
        "--profile",
        default="",
        help="LEVEL:PATH_PREFIX: py-spy the web and the worker during that level",
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]
    profile = None
    if args.profile:
        level, prefix = args.profile.split(":", 1)
        profile = (int(level), Path(prefix).resolve())
    with bench_stack() as env:
        print(measure(env, quick=args.quick, levels=levels, profile=profile).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
