"""One run at a time per output directory: OUT/run.lock.

Two runs writing into one directory (a second `run.py all --out runs/66b` started by mistake, a scheduler's retry
of a job that is still running) would compute the same units twice and overwrite each other's merged tables
without a word. So every command that writes a run directory takes OUT/run.lock first, created whole or not at all
(a hard link of a finished file, so no reader ever sees half a lock), holding its host, pid, the process's start
time, when it started and its command line; it deletes the lock when it ends, on an error or Ctrl-C too. A second
command into the directory, or into a directory inside it, exits 2 naming the directory and the running one.

A lock whose process is gone (kill -9, a node that lost power, a preempted job) is stale: the next run on the same
host takes it over, says so in one line, and resumes as usual. A pid the system has since given to another process
is told apart by the process's start time (Linux /proc), and a lock copied with its directory (`cp -r` of a running
run, to look at it) by the directory it records. A lock held from another host (a shared file system) cannot be
checked from here: the message says so and names the file to delete once that run is gone.

The processes of one torchrun job share one lock: rank 0 takes it; the job is named by torchrun's rendezvous
(MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID), and the other ranks only check that no other run holds the
directory.

    with RunLock(args.out):
        ...   # compute and write into args.out
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from opt66b.fileio import pid_alive
from opt66b.runs.distributed import rank_world
from opt66b.runs.layout import run_lock


class DirectoryBusy(OSError):
    """Another run holds the output directory (run.py: exit 2 with this one line)."""


def job_id() -> str | None:
    """The torchrun job this process belongs to (equal in all of its processes), None for a lone process."""
    if rank_world()[1] == 1:
        return None
    env = os.environ
    return f"torchrun {env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')} {env.get('TORCHELASTIC_RUN_ID', '')}"


def _proc_stat(pid: int) -> list[str]:
    """Fields 3, 4, ... of Linux /proc/PID/stat (after the command name, which may hold spaces); [] elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat field 22); None where unknown."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else None


def holder_record(command: str, root: Path) -> dict[str, Any]:
    """What a lock holds: enough to tell whether its run still runs, and to name it to a user."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "job": job_id(), "command": command,
            "directory": str(Path(root).resolve())}


def copied(held: dict[str, Any], where: Path) -> bool:
    """True when the lock in `where` came along with a copy of another directory (it names that one)."""
    return held.get("directory") not in (None, str(Path(where).resolve()))


def holder_state(held: dict[str, Any], where: Path) -> str:
    """'running', 'gone' (its process ended or is a zombie, or its pid now belongs to a younger process; or the lock
    was copied with its directory from `directory`: it locks that one, not `where`), or 'unknown' (another host:
    nothing here can see its processes)."""
    if copied(held, where):
        return "gone"
    if held.get("host") != socket.gethostname():
        return "unknown"
    pid = held.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid) or _proc_stat(pid)[:1] == ["Z"]:  # Z: killed, not yet reaped
        return "gone"
    now = process_start(pid)
    return "gone" if held.get("process_start") and now and now != held["process_start"] else "running"


def same_job(held: dict[str, Any]) -> bool:
    """True when the lock is this torchrun job's own (a lone process shares no lock)."""
    return job_id() is not None and held.get("job") == job_id()


def describe(held: dict[str, Any]) -> str:
    return (f"`{held.get('command', '?')}` (pid {held.get('pid', '?')} on {held.get('host', '?')}, started "
            f"{held.get('started', '?')})")


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder a lock file records; None when the file is gone or damaged (cut short, not ours)."""
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) and "pid" in held else None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class RunLock:
    """The lock on run directory `root` (module docstring); a context manager."""

    def __init__(self, root: str | Path, command: str | None = None, log: Callable[[str], None] = _log):
        self.root = Path(root)
        self.path = run_lock(self.root)
        self.command = command or " ".join(["run.py", *sys.argv[1:]])
        self.log = log
        self.owned = False
        self.created: list[Path] = []  # directories this lock made, removed again when they stay empty

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        self._check_enclosing()
        rank, world = rank_world()
        if world > 1 and rank != 0:  # rank 0 takes the job's lock; the others only check nobody else holds it
            held = read_lock(self.path)
            if held is not None and not same_job(held) and holder_state(held, self.root) != "gone":
                raise self._busy(self.root, held)
            return
        self._make_root()
        for _ in range(3):
            if self._create():
                self.owned = True
                return
            held = read_lock(self.path)
            state = None if held is None else holder_state(held, self.root)
            if held is not None and same_job(held) and state != "gone":
                return  # a lock of this very torchrun job, held by a live process of it
            if state not in (None, "gone"):
                raise self._busy(self.root, held)
            self._take_over(held)  # stale, damaged, copied, or a restarted job's dead rank 0: this process owns it
        raise DirectoryBusy(f"{self.root}: other runs keep taking its lock {self.path}; start one run at a time")

    def release(self) -> None:
        if self.owned:
            held = read_lock(self.path)
            if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.owned = False
        for d in reversed(self.created):  # a run that wrote nothing leaves nothing behind
            try:
                d.rmdir()
            except OSError:
                break

    def _make_root(self) -> None:
        missing = [p for p in [self.root, *self.root.parents] if not p.exists()]
        self.root.mkdir(parents=True, exist_ok=True)
        self.created = list(reversed(missing))

    def _create(self) -> bool:
        """Create the lock with its whole content (a hard link of a finished file), False when one exists."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{os.urandom(4).hex()}")
        tmp.write_text(json.dumps(holder_record(self.command, self.root)) + "\n", encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, content written right after
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(tmp.read_text(encoding="utf-8"))
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, held: dict[str, Any] | None) -> None:
        """Move a stale (or damaged) lock aside; when another new run replaced it meanwhile, put that one back."""
        aside = self.path.with_name(f".{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if read_lock(aside) != held:  # not the lock judged stale: a live run's, restored (the next try refuses)
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        elif held is None:
            self.log(f"[lock] {self.path}: unreadable lock file (cut short or not a lock); taking it over")
        else:
            why = f"it was copied from {held['directory']}" if copied(held, self.root) else "that process is gone"
            self.log(f"[lock] {self.path}: taking over the stale lock of {describe(held)}: {why}")
        aside.unlink(missing_ok=True)

    def _check_enclosing(self) -> None:
        """A run writing a directory that holds this one (`all --out runs/x` while `eval --out runs/x/eval`)."""
        for parent in self.root.resolve().parents:
            held = read_lock(run_lock(parent))
            if held is not None and not same_job(held) and holder_state(held, parent) != "gone":
                raise self._busy(parent, held)

    def _busy(self, where: Path, held: dict[str, Any]) -> DirectoryBusy:
        if holder_state(held, where) == "unknown":
            return DirectoryBusy(f"{where}: locked by {describe(held)}, on another host, so it cannot be checked from "
                                 f"here; wait for it, use another --out, or delete {run_lock(where)} once that run "
                                 "is gone")
        return DirectoryBusy(f"{where}: another run is writing here: {describe(held)}; wait for it to end or use "
                             "another --out (a second run into one directory would compute the same units twice)")
