"""The code sandbox contains each attack and reports it, and the host is unharmed.

Every test runs real bubblewrap on this machine (no mocks): a failing sandbox
fails these tests. Limits are small so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings as django_settings

from tools.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    WorkspaceEscape,
    run_code,
    sandbox_available,
    workspace_file_open,
    workspace_file_resolve,
    workspace_files,
    workspace_path,
)

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
LIMITS = SandboxLimits(
    wall_seconds=3,
    cpu_seconds=2,
    memory_bytes=64 * MiB,
    file_size_bytes=1 * MiB,
    processes=16,
    output_bytes=64 * 1024,
    tmp_bytes=4 * MiB,
)
AS_ROOT = os.geteuid() == 0


@pytest.fixture(autouse=True)
def sandbox_root(settings):
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, and the sandbox uid
    # has to reach its workspace by path (see test_unreachable_workspace_root).
    root = Path(tempfile.mkdtemp(prefix="tollgate-sandbox-test-"))
    root.chmod(0o711)
    settings.TOLLGATE_SANDBOX_ROOT = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def run(code: str, *, language: str = "python", conversation_id: int = 1, **limits):
    return await run_code(
        language=language,
        code=code,
        conversation_id=conversation_id,
        limits=replace(LIMITS, **limits),
    )


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def live_processes_of_uid(uid: int) -> list[int]:
    """Host pids (not zombies) whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "zombie" in fields.get("State", "") or "Uid" not in fields:
            continue
        if int(fields["Uid"].split()[0]) == uid:
            found.append(int(entry))
    return found


def host_tmp_exists(name: str) -> bool:
    return (Path("/tmp") / name).exists()  # noqa: S108 - the host's /tmp, on purpose


# --- availability -------------------------------------------------------------


async def test_hello_world_runs_sandboxed():
    assert await asyncio.to_thread(sandbox_available) == (True, "")

    result = await run("import os\nprint(sum(range(10)))\nprint(os.getuid(), os.getcwd())")

    assert result.stdout == "45\n65534 /workspace\n"
    assert result.stderr == ""
    assert result.exit_code == 0
    assert result.killed_by is None
    assert result.duration_seconds > 0


async def test_shell_runs_as_unprivileged_user_with_minimal_environment():
    result = await run(
        "id -u; id -g; pwd; env | sort; ls /proc/self/fd | sort -n | tr '\\n' ' '",
        language="shell",
    )

    lines = result.stdout.splitlines()
    assert lines[:3] == ["65534", "65534", "/workspace"]
    env_names = {line.split("=", 1)[0] for line in lines[3:-1]}
    # bash adds SHLVL, PWD and _; nothing from the host's environment.
    assert env_names <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD"}
    # Only stdin/stdout/stderr (plus the fd ls uses to read the directory).
    assert lines[-1].split() in (["0", "1", "2", "3"], ["0", "1", "2"])
    assert result.exit_code == 0


async def test_missing_bwrap_disables_the_sandbox_with_a_reason(settings, sandbox_root):
    settings.TOLLGATE_SANDBOX_BWRAP = str(sandbox_root / "no-such-bwrap")

    ok, reason = await asyncio.to_thread(sandbox_available)

    assert ok is False
    assert "bubblewrap not found" in reason
    assert str(sandbox_root / "no-such-bwrap") in reason
    with pytest.raises(SandboxUnavailable) as excinfo:
        await run("print('never runs')", conversation_id=7)
    assert excinfo.value.reason == reason
    assert not (sandbox_root / "7").exists()


async def test_interpreter_outside_usr_is_refused(settings):
    settings.TOLLGATE_SANDBOX_PYTHON = "/root/.venv/bin/python"
    ok, reason = await asyncio.to_thread(sandbox_available)
    assert ok is False
    assert "Python interpreter not found" in reason or "outside /usr" in reason


@pytest.mark.skipif(not AS_ROOT, reason="only root drops to a uid that cannot traverse 0700")
async def test_unreachable_workspace_root_is_reported(settings, tmp_path):
    # pytest's tmp_path lives under /tmp/pytest-of-root (0700).
    settings.TOLLGATE_SANDBOX_ROOT = tmp_path / "sandbox"

    ok, reason = await asyncio.to_thread(sandbox_available)

    assert ok is False
    assert "cannot reach the workspace root" in reason


async def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="language"):
        await run_code(language="ruby", code="puts 1", conversation_id=1)  # type: ignore[arg-type]
    for bad_id in (0, -3, True, "1"):
        with pytest.raises(ValueError, match="conversation_id"):
            await run_code(language="python", code="", conversation_id=bad_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)


# --- resource attacks ---------------------------------------------------------


async def test_fork_bomb_is_capped_reported_and_reaped():
    baseline = live_processes_of_uid(65534) if AS_ROOT else []
    code = """
import os, time

def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)

try:
    while True:
        if os.fork() == 0:
            bomb()
except BlockingIOError:
    print("live", sum(1 for p in os.listdir("/proc") if p.isdigit()), flush=True)
    raise
"""
    result = await run(code, processes=16)

    live = int(result.stdout.split()[1])
    assert 8 <= live <= 16, result.stdout  # capped at the limit, and it did fork
    assert result.killed_by == "processes"
    assert result.exit_code == 1
    assert "BlockingIOError" in result.stderr
    # Everything is gone the moment run_code returns.
    assert processes_with("/sandbox/main") == []
    if AS_ROOT:
        assert live_processes_of_uid(65534) == baseline
    host = await asyncio.create_subprocess_exec("true")  # the host can still fork
    assert await host.wait() == 0


async def test_shell_fork_bomb_is_contained_and_reaped():
    marker = f"bomb-{uuid.uuid4().hex}"
    # The classic bomb, named so that every copy carries the marker.
    code = f"bash -c ':(){{ :|:& }};:; while :; do :; done' {marker}"

    result = await run(code, language="shell", processes=16, wall_seconds=2, cpu_seconds=10)

    # The busy loop outlives the bomb, so the wall clock ends the run; the
    # bomb itself was refused by the process limit.
    assert result.killed_by == "wall_time"
    assert "fork: retry: Resource temporarily unavailable" in result.stderr
    assert processes_with(marker) == []


async def test_fork_bomb_does_not_starve_another_run():
    # RLIMIT_NPROC is counted per sandbox (per user namespace), not per host uid.
    marker = f"bomb-{uuid.uuid4().hex}"
    code = f"bash -c ':(){{ :|:& }};:; while :; do :; done' {marker}"
    bomb = asyncio.create_task(
        run(code, language="shell", processes=16, wall_seconds=30, cpu_seconds=60)
    )
    try:
        while len(processes_with(marker)) < 12:
            assert not bomb.done(), bomb.result()
            await asyncio.sleep(0.02)

        other = await run(
            "import subprocess\n"
            "procs = [subprocess.Popen(['sleep', '0.2']) for _ in range(10)]\n"
            "print(sum(p.wait() == 0 for p in procs))",
            conversation_id=2,
            processes=16,
        )
    finally:
        bomb.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bomb

    assert other.stdout == "10\n", other.stderr
    assert processes_with(marker) == []


async def test_memory_bomb_is_reported_as_memory():
    result = await run("x = bytearray(512 * 1024 * 1024)", memory_bytes=64 * MiB)
    assert result.killed_by == "memory"
    assert "MemoryError" in result.stderr
    assert result.exit_code == 1

    growing = "chunks = []\nwhile True:\n    chunks.append(bytearray(1024 * 1024))"
    result = await run(growing, memory_bytes=64 * MiB)
    assert result.killed_by == "memory"


async def test_infinite_loop_hits_the_cpu_limit():
    result = await run("while True:\n    pass", cpu_seconds=1, wall_seconds=10)
    assert result.killed_by == "cpu_time"
    assert result.exit_code == 128 + 24  # SIGXCPU

    result = await run("while :; do :; done", language="shell", cpu_seconds=1, wall_seconds=10)
    assert result.killed_by == "cpu_time"


async def test_sleeping_forever_hits_the_wall_time_and_is_reaped():
    marker = f"sleeper-{uuid.uuid4().hex}"

    result = await run(f"exec -a {marker} sleep 3600", language="shell", wall_seconds=1)

    assert result.killed_by == "wall_time"
    assert result.exit_code is None
    assert processes_with(marker) == []


async def test_huge_file_is_cut_at_the_file_size_limit(sandbox_root):
    result = await run("open('big.bin', 'wb').write(b'x' * (8 * 1024 * 1024))")
    assert result.killed_by == "file_size"
    assert "File too large" in result.stderr
    assert (sandbox_root / "1" / "big.bin").stat().st_size <= LIMITS.file_size_bytes

    result = await run("head -c 8000000 /dev/zero > big2.bin", language="shell")
    assert result.killed_by == "file_size"
    assert result.exit_code == 128 + 25  # SIGXFSZ
    assert (sandbox_root / "1" / "big2.bin").stat().st_size <= LIMITS.file_size_bytes


async def test_output_is_truncated_with_a_note():
    code = "import sys\nprint('x' * 200000)\nsys.stderr.write('y' * 100)"
    result = await run(code, output_bytes=1000)

    assert result.stdout == "x" * 1000 + "\n[truncated 199001 bytes]\n"
    assert result.stdout_truncated_bytes == 199001
    assert result.stderr == "y" * 100
    assert result.stderr_truncated_bytes == 0


# --- network ------------------------------------------------------------------


async def test_no_network_not_even_the_hosts_loopback():
    redis_url = urlparse(django_settings.REDIS_URL or "redis://127.0.0.1:6379/0")
    host, port = redis_url.hostname or "127.0.0.1", redis_url.port or 6379
    # The host itself reaches Redis, so a refusal inside means isolation.
    with socket.create_connection((host, port), timeout=5):
        pass
    code = f"""
import json, socket
out = {{}}
for name, family, kind, addr in [
    ("redis", socket.AF_INET, socket.SOCK_STREAM, ({host!r}, {port})),
    ("outside_tcp", socket.AF_INET, socket.SOCK_STREAM, ("1.1.1.1", 53)),
    ("outside_udp", socket.AF_INET, socket.SOCK_DGRAM, ("1.1.1.1", 53)),
]:
    s = socket.socket(family, kind)
    s.settimeout(2)
    try:
        if kind == socket.SOCK_STREAM:
            s.connect(addr)
        else:
            s.sendto(b"x", addr)
        out[name] = "connected"
    except OSError as exc:
        out[name] = exc.errno
routes = open("/proc/net/route").read().splitlines()[1:]
ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
print(json.dumps({{"out": out, "routes": routes, "ifaces": ifaces}}))
"""
    result = await run(code)

    data = json.loads(result.stdout)
    assert data["out"]["redis"] == errno.ECONNREFUSED
    # No route at all: the kernel refuses before any packet leaves.
    assert data["out"]["outside_tcp"] == errno.ENETUNREACH
    assert data["out"]["outside_udp"] == errno.ENETUNREACH
    assert data["routes"] == []
    assert data["ifaces"] == ["lo"]


# --- filesystem ---------------------------------------------------------------


async def test_host_secrets_are_not_visible(monkeypatch):
    secret = f"host-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("TOLLGATE_SANDBOX_TEST_SECRET", secret)
    base = Path(django_settings.BASE_DIR)
    paths = [
        "/etc/shadow",
        str(base / "project" / "settings.py"),
        str(base / ".env"),
        str(base / "manage.py"),
        str(base),
        "/root",
        "/home",
        "/var/lib",
        "/sys",
    ]
    code = f"""
import json, os
paths = {paths!r}
seen = {{p: os.path.exists(p) for p in paths}}
try:
    open("/etc/shadow").read()
    shadow = "read"
except OSError as exc:
    shadow = type(exc).__name__
leaks = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline"):
            try:
                if {secret!r}.encode() in open(f"/proc/{{pid}}/{{name}}", "rb").read():
                    leaks.append(f"{{pid}}/{{name}}")
            except OSError:
                pass
etc = sorted(os.listdir("/etc"))
print(json.dumps({{"seen": seen, "shadow": shadow, "leaks": leaks, "etc": etc}}))
"""
    result = await run(code)

    data = json.loads(result.stdout)
    assert data["seen"] == dict.fromkeys(paths, False)
    assert data["shadow"] == "FileNotFoundError"
    assert data["leaks"] == []
    assert data["etc"] == [
        "alternatives",
        "group",
        "hosts",
        "ld.so.cache",
        "localtime",
        "nsswitch.conf",
        "passwd",
    ]


async def test_nothing_outside_the_workspace_is_writable(sandbox_root):
    host_tmp_name = f"tollgate-sandbox-{uuid.uuid4().hex}"
    targets = ["/x", "/usr/x", "/usr/lib/x", "/etc/x", "/etc/passwd", "/dev/x", "/sandbox/x"]
    targets += ["/sandbox/main", "/proc/x", f"{django_settings.BASE_DIR}/x"]
    code = f"""
import json, os
result = {{}}
for path in {targets!r}:
    try:
        with open(path, "a") as f:
            f.write("owned")
        result[path] = "written"
    except OSError as exc:
        result[path] = exc.errno
with open("/tmp/{host_tmp_name}", "w") as f:
    f.write("private")
try:
    with open("/tmp/fill", "wb") as f:
        f.write(b"x" * (16 * 1024 * 1024))
    result["tmp_fill"] = "written"
except OSError as exc:
    result["tmp_fill"] = exc.errno
with open("/workspace/mine.txt", "w") as f:
    f.write("ok")
print(json.dumps(result))
"""
    result = await run(code, tmp_bytes=4 * MiB, file_size_bytes=32 * MiB)

    data = json.loads(result.stdout)
    for path in targets:
        assert data[path] in (errno.EROFS, errno.ENOENT, errno.EACCES, errno.EPERM), path
    assert data["tmp_fill"] == errno.ENOSPC  # /tmp is small and private
    assert not host_tmp_exists(host_tmp_name)
    written = sandbox_root / "1" / "mine.txt"
    assert written.read_text() == "ok"
    if AS_ROOT:
        assert written.stat().st_uid == 65534


async def test_download_paths_cannot_escape_the_workspace():
    setup = """
ln -s /etc/passwd passwd_link
ln -s ../../../../../../../../etc/passwd relative_link
ln -s /etc etc_dir
ln -s loop_b loop_a; ln -s loop_a loop_b
mkfifo fifo
echo hi > real.txt
ln -s real.txt inner_link
mkdir sub && echo s > sub/f.txt
"""
    result = await run(setup, language="shell", conversation_id=3)
    assert result.exit_code == 0, result.stderr

    for relpath in [
        "passwd_link",
        "relative_link",
        "etc_dir/passwd",
        "loop_a",
        "fifo",
        "..",
        "../1/x",
        "sub/../../3/real.txt",
        "/etc/passwd",
        str(workspace_path(conversation_id=3) / "real.txt"),
        "",
        "a\x00b",
    ]:
        with pytest.raises(WorkspaceEscape):
            workspace_file_resolve(conversation_id=3, relpath=relpath)
    with pytest.raises(WorkspaceEscape):
        workspace_file_open(conversation_id=3, relpath="passwd_link")
    with pytest.raises(FileNotFoundError):
        workspace_file_resolve(conversation_id=3, relpath="missing.txt")
    with pytest.raises(FileNotFoundError):
        workspace_file_resolve(conversation_id=4, relpath="real.txt")  # another conversation
    with pytest.raises(IsADirectoryError):
        workspace_file_resolve(conversation_id=3, relpath="sub")

    real = workspace_file_resolve(conversation_id=3, relpath="real.txt")
    assert real == workspace_path(conversation_id=3).resolve() / "real.txt"
    assert workspace_file_resolve(conversation_id=3, relpath="inner_link") == real
    assert workspace_file_resolve(conversation_id=3, relpath="./sub/f.txt").name == "f.txt"
    with workspace_file_open(conversation_id=3, relpath="real.txt") as f:
        assert f.read() == b"hi\n"
    # Only regular files are listed; links and the FIFO are not.
    assert [f.name for f in workspace_files(conversation_id=3)] == ["real.txt", "sub/f.txt"]
    assert [f.name for f in result.files] == ["real.txt", "sub/f.txt"]


async def test_children_left_behind_are_all_reaped():
    marker = f"orphan-{uuid.uuid4().hex}"
    code = f"""
M={marker}
( exec -a $M-a sleep 300 ) &
setsid bash -c "exec -a $M-b sleep 300" &
nohup bash -c "trap '' HUP TERM; exec -a $M-c sleep 300" >/dev/null 2>&1 &
python3 -c '
import os
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
os.execv("/usr/bin/sleep", ["'$M'-d", "300"])
'
for i in $(seq 100); do
  n=$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c "^$M-")
  [ "$n" -ge 4 ] && break
  sleep 0.05
done
echo "alive=$n"
"""
    result = await run(code, language="shell", wall_seconds=10)

    assert result.stdout.strip() == "alive=4", result.stderr
    assert result.exit_code == 0
    assert processes_with(marker) == []


async def test_cancelled_run_leaves_no_process():
    marker = f"cancelled-{uuid.uuid4().hex}"
    task = asyncio.create_task(
        run(f"exec -a {marker} sleep 300", language="shell", wall_seconds=60)
    )
    while not processes_with(marker):
        assert not task.done(), task.result()
        await asyncio.sleep(0.02)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert processes_with(marker) == []


# --- workspaces ---------------------------------------------------------------


async def test_workspace_persists_per_conversation_and_is_separate():
    first = await run("echo one > state.txt", language="shell", conversation_id=10)
    second = await run("echo two >> state.txt; cat state.txt", language="shell", conversation_id=10)
    other = await run("ls -A; cat state.txt", language="shell", conversation_id=11)

    assert first.exit_code == 0
    assert second.stdout == "one\ntwo\n"
    assert [(f.name, f.size) for f in second.files] == [("state.txt", 8)]
    assert other.stdout == ""
    assert "No such file" in other.stderr
    assert other.files == []
    assert [f.name for f in workspace_files(conversation_id=10)] == ["state.txt"]
    assert workspace_files(conversation_id=11) == []
    assert workspace_files(conversation_id=12) == []  # never ran


def test_workspace_path_is_private_to_the_sandbox_user(sandbox_root):
    path = workspace_path(conversation_id=5)

    assert path == sandbox_root / "5"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    if AS_ROOT:
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert workspace_path(conversation_id=5) == path  # idempotent


# --- concurrency --------------------------------------------------------------


async def test_two_runs_proceed_concurrently_without_blocking_the_loop():
    code = "import time\nprint(time.time(), flush=True)\ntime.sleep(1)\nprint(time.time())"
    ticks: list[float] = []

    async def ticker():
        while True:
            ticks.append(time.time())
            await asyncio.sleep(0.05)

    tick_task = asyncio.create_task(ticker())
    try:
        a, b = await asyncio.gather(run(code, conversation_id=20), run(code, conversation_id=21))
    finally:
        tick_task.cancel()

    a_start, a_end = map(float, a.stdout.split())
    b_start, b_end = map(float, b.stdout.split())
    both_running = (max(a_start, b_start), min(a_end, b_end))
    assert both_running[0] < both_running[1]  # the two sandboxes overlapped
    # ...and the event loop kept running while both were busy.
    assert any(both_running[0] < t < both_running[1] for t in ticks)
