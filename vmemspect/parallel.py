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
        data = pickle.dumps(fn(*args), pickle.HIGHEST_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the parent falls back; nothing to print
        pass
    finally:
        os._exit(status)


def fork_map(fn: Callable[..., Any], arg_list: Sequence[tuple]) -> Optional[List[Any]]:
    """
    ``[fn(*args) for args in arg_list]``, each call in a child forked from
    this process, all at once. None if fork is not available or any child
    failed (raised, was killed, or sent nothing whole).

    ``fn`` must not use drgn's debug-info index (types, symbols not looked
    up before the fork): drgn builds it with OpenMP threads, which a forked
    child does not have. Reads and the caller's cached models are fine.
    """
    if not hasattr(os, "fork"):
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
        ok = True
        last_cpu.clear()
        for pid in children:
            _, status, usage = os.wait4(pid, 0)
            last_cpu.append(usage.ru_utime + usage.ru_stime)
            ok = ok and os.waitstatus_to_exitcode(status) == 0
    if not ok or len(children) != len(arg_list):
        return None
    try:
        return [pickle.loads(b"".join(c)) for c in chunks]
    except Exception:  # noqa: BLE001
        return None
