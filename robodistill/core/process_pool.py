"""Local worker processes that open no network socket: one object per process, called in order.

::

    driver                                     spawned process (one per slot)
    submit(slot, "run", seeds) ─► task pipe ─► obj = factory(*args); obj.run(seeds)
    wait() / get(handle)       ◄─ result pipe ◄ (handle, "ok", value) | (handle, "err", exc)
    process sentinel ─► exited: the slot's unanswered calls become :class:`WorkerDied`

:class:`ProcessWorkers` is the local backend of :class:`robodistill.core.parallel.ParallelRollout`
(the other is Ray actors, used only when a Ray address is given). Each worker is a
``multiprocessing`` process started with the ``spawn`` method and talks to the driver
through two one-way OS pipes; nothing listens on a TCP or UDP port, and there is no shared
queue that a dying process could leave locked. A worker builds its object from
``factory(*args)`` (picklable by reference: a class and plain arguments, never a torch
module) and answers calls strictly in submission order, so when it dies the answers it
finished are still in its pipe and the first unanswered call is the one it was running.

A call that raises inside the worker comes back as that exception (its traceback chained
as a :class:`RemoteTraceback`), and the worker keeps serving; a worker that exits (killed,
out of memory, ``os._exit`` in an env) turns every call it had not answered into
:class:`WorkerDied`, and :meth:`ProcessWorkers.restart` puts a fresh process in its slot.

Workers use one torch / OpenMP / BLAS thread each, like Ray actors with one CPU: several
processes with a thread per core each would contend for the same cores. They ignore
SIGINT (Ctrl-C reaches the whole process group): the driver handles the interrupt and
stops them. Code that starts workers from a script needs the usual ``multiprocessing``
guard, ``if __name__ == "__main__":``, since ``spawn`` imports the main module again.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any

log = logging.getLogger(__name__)

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Thread-count variables a worker starts with set to 1 (unless the user set them)."""
STOP_TIMEOUT_S = 5.0
"""How long :meth:`ProcessWorkers.close` lets an idle worker exit before killing it."""


class WorkerDied(RuntimeError):
    """The worker process holding a call exited before answering it; ``str`` says how."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained under it (as in
    ``concurrent.futures``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def _serve(tasks: Connection, results: Connection, factory: Callable, args: tuple) -> None:
    """A worker's main loop: ``(handle, method, args)`` in, ``(handle, status, value)`` out,
    until the task pipe closes (the driver closed it or died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops us
    try:
        import torch  # the policies' dependency; optional for this module
    except ImportError:
        pass
    else:
        # Whatever OMP_NUM_THREADS says (the user's value is kept for other libraries).
        torch.set_num_threads(1)
    obj = factory(*args)
    while True:
        try:
            handle, method, call_args = tasks.recv()
        except EOFError:  # closed by the driver (or it died): done
            # Skip the interpreter's teardown (a second or more with torch and MuJoCo
            # loaded): the worker holds no files or buffers beyond the standard streams.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        try:
            value, status = getattr(obj, method)(*call_args), "ok"
        except Exception as e:  # the driver re-raises it as itself
            value, status = _picklable(e), "err"
        try:
            results.send((handle, status, value))
        except OSError:  # BrokenPipeError: the driver is gone, nobody wants the answer
            os._exit(0)


def _picklable(e: Exception) -> tuple[Exception, str]:
    """The exception and its formatted traceback (pickling drops tracebacks and causes)."""
    tb = "".join(traceback.format_exception(e))
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # e.g. an exception with odd constructor arguments: keep its text
        e = RuntimeError(f"{type(e).__qualname__}: {e}")
    return e, tb


@contextmanager
def _one_thread_env() -> Iterator[None]:
    """Set :data:`THREAD_ENV` to 1 where unset while a worker starts: a spawned process
    inherits the environment at start, and numpy's BLAS reads it only when it loads."""
    unset = [k for k in THREAD_ENV if k not in os.environ]
    os.environ.update(dict.fromkeys(unset, "1"))
    try:
        yield
    finally:
        for k in unset:
            os.environ.pop(k, None)


def _exit_reason(proc: mp.process.BaseProcess) -> str:
    code = proc.exitcode
    if code is None:
        return "worker process stopped answering"
    if code < 0:
        try:
            return f"worker process killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker process killed by signal {-code}"
    return f"worker process exited with code {code}"


class ProcessWorkers:
    """``workers`` spawned processes, each holding ``factory(*args)``.

    :meth:`submit` queues a method call on one slot and returns a handle; :meth:`wait`
    returns a handle whose answer has arrived; :meth:`get` returns that answer, raises the
    worker's exception, or raises :class:`WorkerDied`. A slot whose process died keeps
    failing calls until :meth:`restart`.
    """

    name = "local"

    def __init__(self, factory: Callable, args: tuple, workers: int) -> None:
        self._ctx = mp.get_context("spawn")
        self._factory, self._args = factory, args
        self.processes: list[Any] = [None] * workers
        self._tasks: list[Connection | None] = [None] * workers
        self._results: list[Connection | None] = [None] * workers
        self._pending: list[deque[int]] = [deque() for _ in range(workers)]
        """Per slot, the handles submitted and not yet answered, oldest first."""
        self._answers: dict[int, tuple[str, Any]] = {}
        self._slot_of: dict[int, int] = {}
        self._ids = itertools.count()
        try:
            for slot in range(workers):
                self._start(slot)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.processes)

    def _start(self, slot: int) -> None:
        task_r, task_w = self._ctx.Pipe(duplex=False)
        result_r, result_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_serve, args=(task_r, result_w, self._factory, self._args),
                                 name=f"robodistill-worker-{slot}", daemon=True)  # fmt: skip
        with _one_thread_env():
            proc.start()
        # The child holds its own copies; closing ours lets a reader see EOF when it dies.
        task_r.close()
        result_w.close()
        self.processes[slot], self._tasks[slot], self._results[slot] = proc, task_w, result_r

    def submit(self, slot: int, method: str, *args: Any) -> int:
        """Queue ``method(*args)`` on ``slot``'s object; returns the call's handle."""
        handle = next(self._ids)
        self._slot_of[handle] = slot
        self._pending[slot].append(handle)
        try:
            self._tasks[slot].send((handle, method, args))
        except OSError:  # BrokenPipeError: the process is gone
            self._lose(slot)
        return handle

    def wait(self, handles: list[Hashable], timeout: float | None) -> int | None:
        """The first of ``handles`` (in their order) that has an answer or lost its worker;
        None when none has one within ``timeout`` seconds."""
        while True:
            for h in handles:
                if h in self._answers:
                    return h
            slots = {self._slot_of[h] for h in handles if h in self._slot_of}
            watched: dict[Any, tuple[str, int]] = {}
            for s in slots:
                watched[self._results[s]] = ("result", s)
                watched[self.processes[s].sentinel] = ("exit", s)
            if not watched:
                raise KeyError(f"unknown handles {handles}")
            ready = wait_any(list(watched), timeout)
            if not ready:
                return None
            for obj in ready:
                kind, slot = watched[obj]
                if kind == "result":
                    self._receive(slot)
                elif self._pending[slot]:  # exited; its finished answers are still readable
                    self._lose(slot)

    def get(self, handle: int) -> Any:
        """The answer of a call :meth:`wait` returned (once); raises the worker's exception
        or :class:`WorkerDied`."""
        status, value = self._answers.pop(handle)
        del self._slot_of[handle]
        if status == "ok":
            return value
        if status == "lost":
            raise WorkerDied(value)
        error, tb = value
        raise error from RemoteTraceback(tb)

    def _receive(self, slot: int) -> None:
        try:
            handle, status, value = self._results[slot].recv()
        except (EOFError, OSError):  # died, possibly halfway through writing an answer
            self._lose(slot)
            return
        self._pending[slot].remove(handle)  # the oldest: answers come in order
        self._answers[handle] = (status, value)

    def _lose(self, slot: int) -> None:
        """The slot's process is gone: read the answers it completed, fail the rest."""
        conn = self._results[slot]
        try:
            while self._pending[slot] and conn.poll():
                handle, status, value = conn.recv()
                self._pending[slot].remove(handle)
                self._answers[handle] = (status, value)
        except (EOFError, OSError):
            pass
        proc = self.processes[slot]
        proc.join(timeout=1.0)  # a broken pipe can be seen just before the exit status
        reason = _exit_reason(proc)
        while self._pending[slot]:
            self._answers[self._pending[slot].popleft()] = ("lost", reason)

    def restart(self, slot: int) -> None:
        """Stop ``slot``'s process (whatever its state) and start a fresh one there; calls it
        had not answered fail with :class:`WorkerDied`."""
        self._stop(slot, timeout=0.0)
        self._start(slot)

    def _stop(self, slot: int, timeout: float) -> None:
        proc = self.processes[slot]
        if proc is None:
            return
        if self._pending[slot] and proc.is_alive():
            proc.kill()  # busy: its answers are not wanted any more
        self._tasks[slot].close()  # an idle worker exits on EOF
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if self._pending[slot]:
            self._lose(slot)
        self._results[slot].close()
        proc.close()
        self.processes[slot] = self._tasks[slot] = self._results[slot] = None

    def close(self) -> None:
        """Stop every worker: idle ones exit by themselves, busy ones are killed."""
        for slot, proc in enumerate(self.processes):
            if proc is not None:
                # All told at once, so that their interpreters shut down side by side.
                if self._pending[slot] and proc.is_alive():
                    proc.kill()
                self._tasks[slot].close()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in range(len(self.processes)):
            self._stop(slot, timeout=max(0.0, deadline - time.monotonic()))
        self._answers.clear()
        self._slot_of.clear()
