"""
Parallel reads
--------------

Work split over forked processes after the program is open: drgn's
``Program`` cannot be pickled, but a child forked from the process that
opened it reads the same dump (libkdumpfile reads a kdump file through
``mmap`` windows at explicit offsets once it is open, so parent and
children share no file offset). Each child runs one function and sends its
result back pickled through a pipe. A failed child makes the whole call
return None: callers use the results only to skip work they can still do
themselves, so that a failure changes the time, never the output.

Only for dumps: a live kernel changes under the scan, and a child would see
another moment of it than its parent.
"""

import os
import pickle
import selectors
import signal
import warnings
from typing import Any, Callable, List, Optional, Sequence

__all__ = ("default_jobs", "fork_map")


#: CPU seconds (user + system) of each child of the last :func:`fork_map`
#: (for benchmarks: how evenly the work was split).
last_cpu: List[float] = []


def default_jobs() -> int:
    """The CPUs this process may run on (``taskset`` is honoured), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _child(fn: Callable[..., Any], args: tuple, w: int) -> None:
    status = 1
    try:
        try:
            data, status = pickle.dumps(fn(*args), pickle.HIGHEST_PROTOCOL), 0
        except BaseException as e:  # noqa: BLE001 - the parent says why and falls back
            # Status 2: the pipe carries why, for the parent to report.
            data, status = f"{type(e).__name__}: {e}".encode()[:2000], 2
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
    except BaseException:  # noqa: BLE001
        status = 1
    finally:
        os._exit(status)


def fork_map(fn: Callable[..., Any], arg_list: Sequence[tuple],
             failure: Optional[List[str]] = None) -> Optional[List[Any]]:
    """
    ``[fn(*args) for args in arg_list]``, each call in a child forked from
    this process, all at once. None if fork is not available or any child
    failed (raised, was killed, or sent nothing whole); then why is
    appended to ``failure`` if given.

    ``fn`` must not use drgn's debug-info index (types, symbols not looked
    up before the fork): drgn builds it with OpenMP threads, which a forked
    child does not have. Reads and the caller's cached models are fine.
    """
    if not hasattr(os, "fork"):
        if failure is not None:
            failure.append("fork() is not available here")
        return None
    children = []
    finished = False
    sel = selectors.DefaultSelector()
    try:
        for i, args in enumerate(arg_list):
            r, w = os.pipe()
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() in a process with threads
                # (drgn's idle OpenMP pool): the child touches none of them.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(fn, args, w)
            os.close(w)
            children.append(pid)
            sel.register(r, selectors.EVENT_READ, i)
        chunks: List[List[bytes]] = [[] for _ in arg_list]
        open_fds = len(arg_list)
        while open_fds:
            for key, _ in sel.select():
                data = os.read(key.fd, 1 << 20)
                if data:
                    chunks[key.data].append(data)
                else:
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    open_fds -= 1
        finished = True
    finally:
        if not finished:
            # Interrupted (^C, a caller's alarm): the children go too.
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for key in list(sel.get_map().values()):
            sel.unregister(key.fd)
            os.close(key.fd)
        sel.close()
        why: List[str] = []
        last_cpu.clear()
        for i, pid in enumerate(children):
            _, status, usage = os.wait4(pid, 0)
            last_cpu.append(usage.ru_utime + usage.ru_stime)
            code = os.waitstatus_to_exitcode(status)
            if code == 2:
                why.append(f"worker {i + 1} raised "
                           + b"".join(chunks[i]).decode(errors="replace"))
            elif code < 0:
                why.append(f"worker {i + 1} was killed by signal {-code}")
            elif code:
                why.append(f"worker {i + 1} exited {code}")
    if not why and len(children) != len(arg_list):
        why.append(f"{len(children)} of {len(arg_list)} workers started")
    if not why:
        try:
            return [pickle.loads(b"".join(c)) for c in chunks]
        except Exception as e:  # noqa: BLE001
            why.append(f"a worker's result could not be read ({e})")
    if failure is not None:
        failure.extend(why)
    return None
