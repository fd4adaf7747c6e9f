"""Run model-written Python or shell code inside a bubblewrap sandbox.

This is the core that the ``code.python`` and ``code.shell`` tools call. It
never runs anything unsandboxed: when bubblewrap (or the interpreter, or
``prlimit``) is missing or its self-test fails, :func:`sandbox_available`
says why and :func:`run_code` raises :class:`SandboxUnavailable`.

How one run is contained (see :func:`_bwrap_argv` for the exact command):

- ``bwrap`` is started as the unprivileged ``TOLLGATE_SANDBOX_UID``/``GID``
  (65534, "nobody") when this process is root, else as the current user, with
  a minimal environment (``bwrap``'s own environment is readable inside the
  sandbox through ``/proc/1/environ``, so the host's secrets must never reach
  it), from ``/`` and with every other descriptor closed.
- New user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``
  plus an explicit ``--unshare-user``), nested user namespaces disabled. The
  new network namespace has only a loopback interface and no route: a
  connection to the host's Redis on 127.0.0.1 is refused, one to the Internet
  fails with ``ENETUNREACH`` before any packet is sent.
- The filesystem is a read-only tmpfs root holding: ``/usr`` read-only (with
  the merged-``/usr`` symlinks ``/bin``, ``/sbin``, ``/lib``, ``/lib64``), a
  handful of ``/etc`` files (``ld.so.cache``, ``alternatives``,
  ``nsswitch.conf``, ``localtime`` read-only from the host; ``passwd``,
  ``group``, ``hosts`` generated), a fresh ``/proc`` for the new PID
  namespace, a minimal read-only ``/dev``, size-capped private tmpfs mounts on
  ``/tmp`` and ``/dev/shm``, the program at ``/sandbox/main`` (read-only), and
  the conversation's workspace read-write at ``/workspace`` (the working
  directory). The project directory, ``/root``, ``/home``, ``/var`` and
  ``/etc/shadow`` simply do not exist in there.
- Resource limits are set inside the sandbox by util-linux ``prlimit`` just
  before it executes the interpreter: CPU seconds (soft; SIGKILL one second
  later), address space, file size, processes (RLIMIT_NPROC), core dumps 0.
  Because they are set *after* bwrap created the user namespace, the kernel
  counts RLIMIT_NPROC per (user namespace, uid): each run gets its own process
  budget, and a fork bomb in one run does not starve another. (Were the
  sandbox uid mapped to host root, RLIMIT_NPROC would not be enforced at all;
  that is why bwrap is started as an unprivileged host uid.)
- Wall time is enforced from outside: on timeout the sandbox's PID 1 (learnt
  from ``--info-fd``) is SIGKILLed, which makes the kernel kill every process
  in the PID namespace, and bwrap itself is killed. After every run
  :func:`run_code` waits until that PID 1 is gone, so no process of the run
  survives the call.

Python runs as Debian's ``/usr/bin/python3 -I`` (isolated mode: no
``PYTHON*`` variables, no user site, script directory not on ``sys.path``),
not the project's interpreter, which lives outside ``/usr`` together with the
project's dependencies and must not be visible. Debian's own
``/usr/lib/python3/dist-packages`` stays importable.

When Tollgate does not run as root, bwrap (and so the sandboxed code) runs
as Tollgate's own host uid: still confined by the namespaces and mounts
above, but not separated by uid. Running the worker as root (it drops to
``TOLLGATE_SANDBOX_UID`` for every run) or as a user dedicated to it is
preferable.

Not enforced (documented limits of this design): total memory and CPU of all
processes of one run together (the limits are per process; up to
``processes`` times ``memory_bytes`` of address space; no cgroup is used), the
total size of the workspace on disk (only each file's size is capped), and
no seccomp filter narrows the system calls the kernel accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from django.conf import settings

Language = Literal["python", "shell"]
LANGUAGES: tuple[str, ...] = ("python", "shell")

# Paths inside the sandbox.
SANDBOX_WORKSPACE = "/workspace"
SANDBOX_PROGRAM = "/sandbox/main"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_TMP = "/tmp"  # noqa: S108 - a private tmpfs inside the sandbox
SANDBOX_SHM = "/dev/shm"  # noqa: S108 - likewise

# Host /etc entries bound read-only when present: the dynamic loader cache,
# Debian's alternatives symlinks (awk, editor, ...), name-service switch and
# time zone. Nothing else from the host's /etc is visible.
_ETC_RO_BINDS: tuple[str, ...] = (
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/nsswitch.conf",
    "/etc/localtime",
)

_READ_CHUNK = 65536
_STDERR_TAIL_BYTES = 8192
_MAX_LISTED_FILES = 1000
_PROBE_TIMEOUT_SECONDS = 20.0
_REAP_GRACE_SECONDS = 5.0


class SandboxError(Exception):
    """Base class for sandbox errors."""


class SandboxUnavailable(SandboxError):
    """The sandbox cannot run here; ``reason`` says why (shown to admins and models)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkspaceEscape(SandboxError):
    """A workspace path points outside the workspace or at something not a regular file."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    ``wall_seconds`` (float, seconds) is enforced from outside by killing the
    sandbox; ``cpu_seconds`` (CPU seconds per process), ``memory_bytes``
    (address space per process), ``file_size_bytes`` (largest file a process
    may write) and ``processes`` (processes and threads at once, per run) are
    kernel rlimits; ``output_bytes`` caps each of stdout and stderr as
    returned; ``tmp_bytes`` sizes each of the private ``/tmp`` and ``/dev/shm``.
    """

    wall_seconds: float = 30.0
    cpu_seconds: int = 10
    memory_bytes: int = 512 * 1024 * 1024
    file_size_bytes: int = 64 * 1024 * 1024
    processes: int = 64
    output_bytes: int = 64 * 1024
    tmp_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "wall_seconds",
            "cpu_seconds",
            "memory_bytes",
            "file_size_bytes",
            "processes",
            "output_bytes",
            "tmp_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        # Python, bash and prlimit themselves need a few processes/megabytes.
        if self.processes < 4:
            raise ValueError("SandboxLimits.processes must be at least 4")

    @classmethod
    def from_settings(cls) -> SandboxLimits:
        """Limits from the ``TOLLGATE_SANDBOX_*`` settings (read at call time)."""
        return cls(
            wall_seconds=float(settings.TOLLGATE_SANDBOX_WALL_SECONDS),
            cpu_seconds=int(settings.TOLLGATE_SANDBOX_CPU_SECONDS),
            memory_bytes=int(settings.TOLLGATE_SANDBOX_MEMORY_BYTES),
            file_size_bytes=int(settings.TOLLGATE_SANDBOX_FILE_SIZE_BYTES),
            processes=int(settings.TOLLGATE_SANDBOX_PROCESSES),
            output_bytes=int(settings.TOLLGATE_SANDBOX_OUTPUT_BYTES),
            tmp_bytes=int(settings.TOLLGATE_SANDBOX_TMP_BYTES),
        )


@dataclass(frozen=True)
class WorkspaceFile:
    """A regular file in a workspace: ``name`` is its POSIX path relative to
    the workspace, ``size`` in bytes, ``modified`` an aware UTC datetime."""

    name: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class SandboxResult:
    """What one run produced.

    ``stdout``/``stderr`` are decoded as UTF-8 (invalid bytes replaced) and cut
    at ``limits.output_bytes`` with a final ``[truncated N bytes]`` note.
    ``exit_code`` is the program's exit status (128+N when signal N killed it,
    the shell convention bwrap follows), or ``None`` when the run was killed
    for exceeding its wall time (or was cancelled). ``killed_by`` names the
    limit the run ran into, inferred as honestly as possible: ``"wall_time"``
    (certain: we killed it), ``"cpu_time"`` (SIGXCPU), ``"file_size"``
    (SIGXFSZ or EFBIG), ``"memory"`` (the interpreter's/shell's out-of-memory
    error), ``"processes"`` (fork/thread creation refused with EAGAIN),
    ``"signal N"`` for any other fatal signal, else ``None``. The message-based
    inferences read stderr, so a program printing such a message is reported
    the same way; containment never depends on this field. ``files`` lists the
    workspace after the run.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    duration_seconds: float
    killed_by: str | None
    files: list[WorkspaceFile]
    stdout_truncated_bytes: int = 0
    stderr_truncated_bytes: int = 0


@dataclass(frozen=True)
class _Config:
    bwrap: str
    prlimit: str
    python: str
    shell: str
    uid: int
    gid: int
    root: str

    @classmethod
    def from_settings(cls) -> _Config:
        return cls(
            bwrap=str(settings.TOLLGATE_SANDBOX_BWRAP),
            prlimit=str(settings.TOLLGATE_SANDBOX_PRLIMIT),
            python=str(settings.TOLLGATE_SANDBOX_PYTHON),
            shell=str(settings.TOLLGATE_SANDBOX_SHELL),
            uid=int(settings.TOLLGATE_SANDBOX_UID),
            gid=int(settings.TOLLGATE_SANDBOX_GID),
            root=str(settings.TOLLGATE_SANDBOX_ROOT),
        )

    @property
    def drop_privileges(self) -> bool:
        return os.geteuid() == 0


# --- availability -------------------------------------------------------------


def sandbox_available() -> tuple[bool, str]:
    """Whether sandboxed code can run here: ``(True, "")`` or ``(False, reason)``.

    Checks that bubblewrap, prlimit, the Python interpreter and the shell named
    in settings exist (the last three under ``/usr``, the only host tree the
    sandbox sees), then runs a trivial program through the full sandbox. The
    result is cached per process and per configuration (changing the
    ``TOLLGATE_SANDBOX_*`` paths or uid probes again). The first call runs a
    subprocess (about 0.1 s, at most 20 s); async callers should use
    ``asyncio.to_thread``.
    """
    return _probe(_Config.from_settings())


@functools.lru_cache(maxsize=16)
def _probe(config: _Config) -> tuple[bool, str]:
    reason = _static_problems(config)
    if reason:
        return False, reason
    expected = "tollgate-sandbox-ok 42"
    code = f"echo -n 'tollgate-sandbox-ok '; exec {shlex.quote(config.python)} -I -c 'print(6*7)'\n"
    limits = SandboxLimits(wall_seconds=_PROBE_TIMEOUT_SECONDS)
    try:
        root = _ensure_root(Path(config.root))
    except OSError as exc:
        return False, f"sandbox workspace root {config.root} cannot be created: {exc}"
    with tempfile.TemporaryDirectory(prefix=".probe-", dir=root) as tmp:
        try:
            if config.drop_privileges:
                os.chown(tmp, config.uid, config.gid)
            with _PreparedRun(
                config=config,
                limits=limits,
                language="shell",
                code=code,
                workspace=Path(tmp),
                info_fd=False,
            ) as prepared:
                completed = subprocess.run(  # noqa: S603 - argv built from settings, no shell
                    prepared.argv,
                    pass_fds=prepared.pass_fds,
                    **prepared.popen_kwargs(),
                    capture_output=True,
                    timeout=_PROBE_TIMEOUT_SECONDS,
                    check=False,
                )
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"bubblewrap sandbox could not be started: {exc}"
    out = completed.stdout.decode("utf-8", "replace").strip()
    if completed.returncode != 0 or out != expected:
        err = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[-1] if err else out or "no output"
        if "Can't find source path" in detail and "Permission denied" in detail:
            return False, (
                f"the sandbox user (uid {config.uid}) cannot reach the workspace root "
                f"{config.root}: every parent directory must be searchable by it (chmod o+x)"
            )
        return False, (
            f"bubblewrap sandbox failed its self-test (exit {completed.returncode}): {detail}"
        )
    return True, ""


def _static_problems(config: _Config) -> str:
    if not _is_executable_file(config.bwrap):
        return f"bubblewrap not found at {config.bwrap} (install the 'bubblewrap' package)"
    for what, path in (
        ("prlimit (util-linux)", config.prlimit),
        ("Python interpreter", config.python),
        ("shell", config.shell),
    ):
        if not _is_executable_file(path):
            return f"{what} not found at {path}"
        real = Path(path).resolve()
        if not real.is_relative_to("/usr"):
            return f"{what} {path} resolves to {real}, outside /usr, which the sandbox cannot see"
    if config.drop_privileges and (config.uid <= 0 or config.gid <= 0):
        return "TOLLGATE_SANDBOX_UID/GID must name an unprivileged user, not root"
    return ""


def _is_executable_file(path: str) -> bool:
    return os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK)


# --- workspaces ---------------------------------------------------------------


def _check_conversation_id(conversation_id: int) -> int:
    if isinstance(conversation_id, bool) or not isinstance(conversation_id, int):
        raise ValueError(f"conversation_id must be an int, got {conversation_id!r}")
    if conversation_id <= 0:
        raise ValueError(f"conversation_id must be positive, got {conversation_id}")
    return conversation_id


def _ensure_root(root: Path) -> Path:
    """Create the workspace root: mode 0711, so the sandbox uid (which starts
    bwrap and must reach its own workspace by path) can traverse it without
    being able to list the other conversations' workspaces."""
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    st = root.stat()
    if not st.st_mode & stat.S_IXOTH and st.st_uid == os.geteuid():
        os.chmod(root, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
    return root


def _workspace_dir(conversation_id: int) -> Path:
    root = Path(settings.TOLLGATE_SANDBOX_ROOT)
    return root / str(_check_conversation_id(conversation_id))


def workspace_path(*, conversation_id: int) -> Path:
    """The host directory bound at ``/workspace`` for this conversation.

    Created on demand (mode 0700, owned by the sandbox uid when we are root)
    and kept between runs; different conversations never share one. Raises
    ``ValueError`` for a non-positive or non-int id and ``SandboxError`` if the
    path exists but is not a real directory.
    """
    path = _workspace_dir(conversation_id)
    _ensure_root(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"workspace {path} is not a directory")
    config = _Config.from_settings()
    if config.drop_privileges and (st.st_uid, st.st_gid) != (config.uid, config.gid):
        os.chown(path, config.uid, config.gid, follow_symlinks=False)
    return path


def workspace_files(*, conversation_id: int) -> list[WorkspaceFile]:
    """Regular files in the conversation's workspace, recursively, sorted by name.

    Symbolic links and special files are not listed and never followed (the
    walk uses directory descriptors, so code replacing a directory with a link
    while we list cannot steer it outside). At most 1000 entries. A
    conversation without a workspace has no files.
    """
    top = _workspace_dir(conversation_id)
    if not top.is_dir() or top.is_symlink():
        return []
    files: list[WorkspaceFile] = []
    for dirpath, _dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        rel_dir = PurePosixPath(os.path.relpath(dirpath, top))
        for filename in filenames:
            try:
                st = os.stat(filename, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append(
                WorkspaceFile(
                    name=str(rel_dir / filename) if str(rel_dir) != "." else filename,
                    size=st.st_size,
                    modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
                )
            )
            if len(files) >= _MAX_LISTED_FILES:
                return sorted(files, key=lambda f: f.name)
    return sorted(files, key=lambda f: f.name)


def _relative_parts(relpath: str) -> tuple[str, ...]:
    if not isinstance(relpath, str) or not relpath.strip():
        raise WorkspaceEscape("a file path relative to the workspace is required")
    if "\x00" in relpath:
        raise WorkspaceEscape("file path contains a NUL byte")
    pure = PurePosixPath(relpath)
    if pure.is_absolute():
        raise WorkspaceEscape(f"absolute paths are not allowed: {relpath!r}")
    parts = tuple(p for p in pure.parts if p != ".")
    if ".." in parts:
        raise WorkspaceEscape(f"'..' is not allowed in workspace paths: {relpath!r}")
    if not parts:
        raise WorkspaceEscape("a file path relative to the workspace is required")
    return parts


def workspace_file_resolve(*, conversation_id: int, relpath: str) -> Path:
    """The real host path of a regular file inside the conversation's workspace.

    ``relpath`` is relative to the workspace (as listed by
    :func:`workspace_files`). Refused with :class:`WorkspaceEscape`: absolute
    paths, ``..`` components, NUL bytes, symlinks (anywhere in the path) that
    resolve outside the workspace or loop, and anything that is not a regular
    file or directory (devices, FIFOs, sockets). Raises ``FileNotFoundError``
    when it does not exist (or the workspace does not) and
    ``IsADirectoryError`` for a directory. The returned path contains no
    symlinks; to read it use :func:`workspace_file_open`, which also defends
    against code in a concurrent run swapping components for links.
    """
    parts = _relative_parts(relpath)
    top = _workspace_dir(conversation_id)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        raise FileNotFoundError(f"no workspace for conversation {conversation_id}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise WorkspaceEscape("workspace is not a directory")
    base = top.resolve(strict=True)
    try:
        resolved = base.joinpath(*parts).resolve(strict=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file in the workspace: {relpath}") from None
    except (RuntimeError, OSError) as exc:  # symlink loop, name too long, ...
        raise WorkspaceEscape(f"cannot resolve {relpath!r}: {exc}") from None
    if resolved == base or not resolved.is_relative_to(base):
        raise WorkspaceEscape(f"{relpath!r} points outside the workspace")
    st = os.lstat(resolved)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{relpath} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise WorkspaceEscape(f"{relpath!r} is not a regular file")
    return resolved


def workspace_file_open(*, conversation_id: int, relpath: str) -> BinaryIO:
    """Open a workspace file for reading (binary), safely; the caller closes it.

    Resolves like :func:`workspace_file_resolve` (same errors), then opens the
    resolved path one component at a time with ``O_NOFOLLOW`` from the
    workspace's directory descriptor and checks the opened object is a regular
    file, so a link swapped in after the check is refused (``WorkspaceEscape``)
    instead of followed. Use this for downloads.
    """
    resolved = workspace_file_resolve(conversation_id=conversation_id, relpath=relpath)
    base = _workspace_dir(conversation_id).resolve(strict=True)
    parts = resolved.relative_to(base).parts
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | nofollow)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            except (NotADirectoryError, OSError) as exc:
                raise WorkspaceEscape(f"{relpath!r} changed while opening: {exc}") from None
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | nofollow, dir_fd=fd
            )
        except OSError as exc:
            raise WorkspaceEscape(f"{relpath!r} changed while opening: {exc}") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise WorkspaceEscape(f"{relpath!r} is not a regular file")
    os.set_blocking(file_fd, True)
    return os.fdopen(file_fd, "rb")


# --- running ------------------------------------------------------------------


def _data_fd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _etc_files(uid: int, gid: int) -> dict[str, bytes]:
    return {
        "/etc/passwd": (
            f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{gid}:sandbox:/tmp:/usr/sbin/nologin\n"
        ).encode(),
        "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\n".encode(),
        "/etc/hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tsandbox\n",
    }


def _bwrap_argv(
    *,
    config: _Config,
    limits: SandboxLimits,
    language: Language,
    workspace: Path,
    program_fd: int,
    etc_fds: dict[str, int],
    info_fd: int | None,
) -> list[str]:
    """The full command line: bwrap options, then prlimit, then the interpreter."""
    argv = [
        config.bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--uid",
        str(config.uid),
        "--gid",
        str(config.gid),
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    for path in _ETC_RO_BINDS:
        argv += ["--ro-bind-try", path, path]
    for path, fd in etc_fds.items():
        argv += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.tmp_bytes),
        "--tmpfs",
        SANDBOX_SHM,
        "--size",
        str(limits.tmp_bytes),
        "--tmpfs",
        SANDBOX_TMP,
        "--bind",
        str(workspace),
        SANDBOX_WORKSPACE,
        "--perms",
        "0444",
        "--ro-bind-data",
        str(program_fd),
        SANDBOX_PROGRAM,
        # Everything not mounted above stays read-only: the root tmpfs and /dev.
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        SANDBOX_WORKSPACE,
        "--clearenv",
        "--setenv",
        "PATH",
        SANDBOX_PATH,
        "--setenv",
        "HOME",
        SANDBOX_TMP,
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "TMPDIR",
        SANDBOX_TMP,
    ]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    cpu = int(limits.cpu_seconds)
    argv += [
        "--",
        config.prlimit,
        # soft:hard — SIGXCPU at the soft limit (reported as cpu_time), SIGKILL a second later.
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={int(limits.memory_bytes)}",
        f"--fsize={int(limits.file_size_bytes)}",
        f"--nproc={int(limits.processes)}",
        "--core=0",
        "--",
    ]
    if language == "python":
        argv += [config.python, "-I", SANDBOX_PROGRAM]
    else:
        argv += [config.shell, "--noprofile", "--norc", SANDBOX_PROGRAM]
    return argv


class _PreparedRun:
    """Opens the descriptors one run needs and builds its command line."""

    def __init__(
        self,
        *,
        config: _Config,
        limits: SandboxLimits,
        language: Language,
        code: str,
        workspace: Path,
        info_fd: bool,
    ) -> None:
        self.config = config
        self.limits = limits
        self.language = language
        self.code = code
        self.workspace = workspace
        self.want_info = info_fd
        self._fds: list[int] = []
        self.info_read_fd: int | None = None
        self.info_write_fd: int | None = None
        self.argv: list[str] = []
        self.pass_fds: tuple[int, ...] = ()

    def __enter__(self) -> _PreparedRun:
        try:
            program_fd = _data_fd("tollgate-program", self.code.encode("utf-8", "surrogatepass"))
            self._fds.append(program_fd)
            etc_fds: dict[str, int] = {}
            for path, data in _etc_files(self.config.uid, self.config.gid).items():
                fd = _data_fd("tollgate-etc", data)
                self._fds.append(fd)
                etc_fds[path] = fd
            if self.want_info:
                self.info_read_fd, self.info_write_fd = os.pipe()
                self._fds.append(self.info_write_fd)
            self.argv = _bwrap_argv(
                config=self.config,
                limits=self.limits,
                language=self.language,
                workspace=self.workspace,
                program_fd=program_fd,
                etc_fds=etc_fds,
                info_fd=self.info_write_fd,
            )
            self.pass_fds = tuple(self._fds)
        except BaseException:
            self.close()
            raise
        return self

    def popen_kwargs(self) -> dict:
        kwargs: dict = {
            # bwrap's own environment is readable in the sandbox via /proc/1/environ.
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            "cwd": "/",
            "stdin": subprocess.DEVNULL,
            "start_new_session": True,
        }
        if self.config.drop_privileges:
            kwargs.update(user=self.config.uid, group=self.config.gid, extra_groups=[])
        return kwargs

    def close(self) -> None:
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())
        self.info_write_fd = None

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.info_read_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.info_read_fd)
            self.info_read_fd = None


class _Capture:
    """Reads one pipe to EOF, keeping the first ``limit`` bytes and a tail."""

    def __init__(self, limit: int, tail: int = 0) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.tail_limit = tail
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            self.total += len(chunk)
            room = self.limit - len(self.head)
            if room > 0:
                self.head += chunk[:room]
            if self.tail_limit:
                self.tail += chunk
                del self.tail[: max(0, len(self.tail) - self.tail_limit)]

    @property
    def truncated(self) -> int:
        return self.total - len(self.head)

    def text(self) -> str:
        text = bytes(self.head).decode("utf-8", "replace")
        if self.truncated:
            sep = "" if text.endswith("\n") or not text else "\n"
            text += f"{sep}[truncated {self.truncated} bytes]\n"
        return text


# Messages interpreters and shells print when a limit refuses them something.
_LIMIT_MESSAGES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "memory",
        re.compile(
            "|".join(
                (
                    "MemoryError",
                    "Cannot allocate memory",
                    "cannot allocate",
                    "memory exhausted",
                    "out of memory",
                    "bad_alloc",
                )
            ),
            re.IGNORECASE,
        ),
    ),
    ("file_size", re.compile(r"File too large|File size limit exceeded")),
    ("cpu_time", re.compile(r"CPU time limit exceeded")),
    (
        "processes",
        re.compile(
            "|".join(
                (
                    r"fork: (?:retry: )?Resource temporarily unavailable",
                    r"BlockingIOError: \[Errno 11\]",
                    r"can't start new thread",
                    r"Cannot fork",
                    r"fork failed",
                )
            )
        ),
    ),
)
_SIGNAL_LIMITS = {signal.SIGXCPU: "cpu_time", signal.SIGXFSZ: "file_size"}


def _infer_killed_by(*, timed_out: bool, exit_code: int | None, stderr_tail: str) -> str | None:
    if timed_out:
        return "wall_time"
    if exit_code is not None and 128 < exit_code <= 128 + 64:
        signum = exit_code - 128
        if signum in _SIGNAL_LIMITS:
            return _SIGNAL_LIMITS[signal.Signals(signum)]
    # The limit whose message comes last is the one most likely fatal.
    best: tuple[int, str] | None = None
    for name, pattern in _LIMIT_MESSAGES:
        for match in pattern.finditer(stderr_tail):
            if best is None or match.start() > best[0]:
                best = (match.start(), name)
    if best is not None:
        return best[1]
    if exit_code is not None and 128 < exit_code <= 128 + 64:
        return f"signal {exit_code - 128}"
    return None


def _proc_start_time(pid: int) -> str | None:
    """Field 22 (start time) and state of /proc/<pid>/stat, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None  # a zombie PID 1 means every process of its namespace is gone
    return fields[19]


async def _reap_namespace(child_pid: int | None, start_time: str | None) -> None:
    """Wait until the sandbox's PID 1 (and with it the whole namespace) is gone."""
    if child_pid is None or start_time is None:
        return
    deadline = time.monotonic() + _REAP_GRACE_SECONDS
    killed = False
    while _proc_start_time(child_pid) == start_time:
        if killed and time.monotonic() > deadline + _REAP_GRACE_SECONDS:
            raise SandboxError(f"sandbox PID {child_pid} survived SIGKILL")
        if not killed and time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
            killed = True
        await asyncio.sleep(0.005)


def _kill(proc: asyncio.subprocess.Process, child_pid: int | None, start_time: str | None) -> None:
    # PID 1 of the sandbox first: its death makes the kernel kill the namespace.
    if (
        child_pid is not None
        and start_time is not None
        and _proc_start_time(child_pid) == start_time
    ):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


async def run_code(
    *,
    language: Language,
    code: str,
    conversation_id: int,
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Run ``code`` (Python 3 source or a bash script) in the conversation's sandbox.

    The program is read-only at ``/sandbox/main``, runs with ``/workspace``
    (the conversation's persistent workspace) as working directory, stdin
    ``/dev/null``, no network, and ``limits`` (default: from settings). Never
    blocks the event loop; concurrent calls run concurrently. When it returns
    (or is cancelled), no process of the run is left. Raises
    :class:`SandboxUnavailable` if :func:`sandbox_available` is false (nothing
    is run), ``ValueError`` for a bad language, code or conversation id.
    """
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    if not isinstance(code, str):
        raise ValueError("code must be a string")
    _check_conversation_id(conversation_id)
    limits = limits or SandboxLimits.from_settings()
    config = _Config.from_settings()
    ok, reason = await asyncio.to_thread(_probe, config)
    if not ok:
        raise SandboxUnavailable(reason)
    workspace = await asyncio.to_thread(workspace_path, conversation_id=conversation_id)

    stdout = _Capture(limits.output_bytes)
    stderr = _Capture(limits.output_bytes, tail=_STDERR_TAIL_BYTES)
    timed_out = False
    child_pid: int | None = None
    start_time: str | None = None
    started = time.monotonic()
    with _PreparedRun(
        config=config,
        limits=limits,
        language=language,
        code=code,
        workspace=workspace,
        info_fd=True,
    ) as prepared:
        proc = await asyncio.create_subprocess_exec(
            *prepared.argv,
            pass_fds=prepared.pass_fds,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **prepared.popen_kwargs(),
        )
        prepared.close()  # our copies; the child holds its own
        assert prepared.info_read_fd is not None  # noqa: S101 - set by info_fd=True
        info_file = os.fdopen(prepared.info_read_fd, "rb", buffering=0)
        prepared.info_read_fd = None
        info_reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        info_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(info_reader), info_file
        )
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101
        tasks = [
            asyncio.ensure_future(proc.wait()),
            asyncio.ensure_future(stdout.drain(proc.stdout)),
            asyncio.ensure_future(stderr.drain(proc.stderr)),
        ]
        info_task = asyncio.ensure_future(_read_info(info_reader))
        try:
            # bwrap writes {"child-pid": N, ...} once the sandbox is set up.
            done, _ = await asyncio.wait(
                [info_task, tasks[0]],
                timeout=limits.wall_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if info_task in done:
                child_pid, start_time = info_task.result()
            remaining = max(0.0, limits.wall_seconds - (time.monotonic() - started))
            _, pending = await asyncio.wait(tasks, timeout=remaining)
            if pending:
                timed_out = True
                _kill(proc, child_pid, start_time)
                _, pending = await asyncio.wait(tasks, timeout=_REAP_GRACE_SECONDS)
                for task in pending:  # a pipe still open after the kill: stop reading it
                    task.cancel()
            await _reap_namespace(child_pid, start_time)
        except BaseException:
            # Cancelled (or failed): kill the sandbox and leave nothing behind.
            _kill(proc, child_pid, start_time)
            for task in tasks[1:]:
                task.cancel()
            await asyncio.shield(_cleanup(proc, child_pid, start_time))
            raise
        finally:
            info_task.cancel()
            info_transport.close()
    duration = time.monotonic() - started
    exit_code = None if timed_out else proc.returncode
    if exit_code is not None and exit_code < 0:  # bwrap itself killed by a signal
        exit_code = 128 - exit_code
    stderr_tail = bytes(stderr.tail).decode("utf-8", "replace")
    files = await asyncio.to_thread(workspace_files, conversation_id=conversation_id)
    return SandboxResult(
        stdout=stdout.text(),
        stderr=stderr.text(),
        exit_code=exit_code,
        duration_seconds=duration,
        killed_by=_infer_killed_by(
            timed_out=timed_out, exit_code=exit_code, stderr_tail=stderr_tail
        ),
        files=files,
        stdout_truncated_bytes=stdout.truncated,
        stderr_truncated_bytes=stderr.truncated,
    )


async def _read_info(reader: asyncio.StreamReader) -> tuple[int | None, str | None]:
    """Read bwrap's ``--info-fd`` JSON document; ``(child_pid, start_time)``."""
    data = b""
    decoder = json.JSONDecoder()
    while chunk := await reader.read(4096):
        data += chunk
        try:
            info, _ = decoder.raw_decode(data.decode("utf-8", "replace").strip())
        except ValueError:
            continue
        try:
            child_pid = int(info["child-pid"])
        except (KeyError, TypeError, ValueError):
            return None, None
        return child_pid, _proc_start_time(child_pid)
    return None, None


async def _cleanup(
    proc: asyncio.subprocess.Process, child_pid: int | None, start_time: str | None
) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError, TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout=_REAP_GRACE_SECONDS)
    await _reap_namespace(child_pid, start_time)


def sandbox_command_line(*, language: Language = "python", conversation_id: int = 1) -> str:
    """The bwrap command line a run would use, with placeholder descriptor numbers.

    For documentation and the admin page; nothing is run.
    """
    config = _Config.from_settings()
    argv = _bwrap_argv(
        config=config,
        limits=SandboxLimits.from_settings(),
        language=language,
        workspace=_workspace_dir(conversation_id),
        program_fd=3,
        etc_fds={path: 4 + i for i, path in enumerate(_etc_files(config.uid, config.gid))},
        info_fd=7,
    )
    return shlex.join(argv)
