"""A stand-in for the `spaces` package that runs `@GPU` functions the way ZeroGPU does, on this CPU.

What it keeps of `spaces/zero/wrappers.py` (spaces 0.51): the decorated function runs in a child process made
with the `fork` multiprocessing context; its arguments are pickled to it and everything it returns or yields comes
back pickled through a pipe, drained by a thread of the parent; a generator's outputs stream back one by one; closing
the parent's generator sets a stop event that the child checks after each item and then closes its generator;
exceptions come back and are raised in the parent. `duration` (a number, or a function of the same arguments) is
evaluated in the parent. Whatever the function writes to module state stays in the child: it is lost.

By default every call forks a fresh child, so a state that only seems to survive because the same worker served two
calls cannot pass. ZeroGPU may also reuse an idle worker: within `reuse_workers()` one worker, forked on the first
call, serves every later call (one at a time), so it has only what the main process held when it forked.

Use: put this module in `sys.modules["spaces"]` before importing `ui/gpu.py` (see tests/test_zerogpu.py).
"""

import functools
import inspect
import multiprocessing
import os
import pickle
import queue
import threading
from dataclasses import dataclass

import torch

_CTX = multiprocessing.get_context("fork")
IN_CHILD = False


@dataclass
class Call:
    name: str
    duration: float | None
    pid: int  # the child's
    exitcode: int | None = None  # set once the child has exited
    items: int = 0  # results that came back


calls: list[Call] = []  # every call made in this (parent) process, in order
_TASKS: dict[str, object] = {}  # every decorated function by name: how a reused worker finds the one called
_reuse: dict = {}  # within `reuse_workers()`: the worker's process, task queue, results queue and stop event
_reuse_lock = threading.Lock()  # a reused worker serves one call at a time
cuda_touches: list[str] = []  # CUDA queries made in the parent while `watch_cuda` is on


def _child(task, payload: bytes, results, stop) -> None:
    global IN_CHILD
    IN_CHILD = True
    try:
        args, kwargs = pickle.loads(payload)
        if inspect.isgeneratorfunction(task):
            gen = task(*args, **kwargs)
            for item in gen:
                if stop.is_set():
                    gen.close()
                    break
                results.put(("item", pickle.dumps(item)))
        else:
            results.put(("item", pickle.dumps(task(*args, **kwargs))))
        results.put(("end", None))
    except BaseException as e:  # handed back, raised in the parent
        try:
            results.put(("error", pickle.dumps(e)))
        except Exception:
            results.put(("error", pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))))


def _serve(tasks, results, stop) -> None:
    """A reused worker: runs the calls sent to it, one after the other, until the parent goes."""
    while True:
        name, payload = tasks.get()
        _child(_TASKS[name], payload, results, stop)


def _start(task, duration, args, kwargs):
    seconds = duration(*args, **kwargs) if callable(duration) else duration
    payload = pickle.dumps((args, kwargs))  # ZeroGPU pickles the arguments into the worker
    if _reuse:
        _reuse_lock.acquire()  # released by `_finish`
        if "proc" not in _reuse:
            _reuse.update(tasks=_CTX.SimpleQueue(), results=_CTX.SimpleQueue(), stop=_CTX.Event())
            _reuse["proc"] = _CTX.Process(
                target=_serve, args=(_reuse["tasks"], _reuse["results"], _reuse["stop"]), daemon=True
            )
            _reuse["proc"].start()
        proc, results, stop = _reuse["proc"], _reuse["results"], _reuse["stop"]
        stop.clear()
        _reuse["tasks"].put((f"{task.__module__}.{task.__qualname__}", payload))
    else:
        results, stop = _CTX.SimpleQueue(), _CTX.Event()
        proc = _CTX.Process(target=_child, args=(task, payload, results, stop), daemon=True)
        proc.start()
    call = Call(task.__name__, seconds, proc.pid)
    calls.append(call)
    inbox: queue.Queue = queue.Queue()

    def drain():  # like spaces' fill_yield_queue: the child never blocks on a full pipe
        while True:
            kind, value = results.get()
            inbox.put((kind, value))
            if kind in ("end", "error"):
                return

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    return call, (proc, drainer), inbox, stop


def _finish(call, worker, timeout: float = 120.0) -> None:
    proc, drainer = worker
    if proc is _reuse.get("proc"):  # a reused worker stays; this call is over once it has said so
        drainer.join(timeout)
        _reuse_lock.release()
        return
    proc.join(timeout)
    call.exitcode = proc.exitcode


class reuse_workers:
    """Within the block, one worker process, forked on the first call, serves every call; stopped at the end."""

    def __enter__(self):
        _reuse["on"] = True
        return self

    def __exit__(self, *exc):
        proc = _reuse.get("proc")
        _reuse.clear()
        if proc is not None:
            proc.kill()
            proc.join(10)


def GPU(task=None, *, duration=None, size=None, **kwargs):
    """`spaces.GPU`: `@GPU`, `@GPU(duration=60)` or `@GPU(duration=fn)`."""
    if task is None:
        return functools.partial(GPU, duration=duration, size=size)
    _TASKS[f"{task.__module__}.{task.__qualname__}"] = task

    if inspect.isgeneratorfunction(task):

        @functools.wraps(task)
        def handler(*args, **kw):
            if IN_CHILD:  # a GPU function called from inside a worker runs in place, as in spaces
                yield from task(*args, **kw)
                return
            call, proc, inbox, stop = _start(task, duration, args, kw)
            try:
                while True:
                    kind, value = inbox.get()
                    if kind == "end":
                        return
                    value = pickle.loads(value)
                    if kind == "error":
                        raise value
                    call.items += 1
                    try:
                        yield value
                    except GeneratorExit:
                        stop.set()
                        raise
            finally:
                _finish(call, proc)

        return handler

    @functools.wraps(task)
    def regular(*args, **kw):
        if IN_CHILD:
            return task(*args, **kw)
        call, proc, inbox, _ = _start(task, duration, args, kw)
        try:
            kind, value = inbox.get()
            value = pickle.loads(value)
            if kind == "error":
                raise value
            call.items += 1
            return value
        finally:
            _finish(call, proc)

    return regular


class watch_cuda:
    """Within the block, record every `torch.cuda.is_available()` asked in the parent (ZeroGPU's main process has no
    usable CUDA: only GPU functions may touch it); a child asks the real one, as `spaces` unpatches torch there."""

    def __enter__(self):
        self._orig = torch.cuda.is_available
        cuda_touches.clear()

        def is_available():
            if not IN_CHILD:
                cuda_touches.append(f"torch.cuda.is_available() in the main process (pid {os.getpid()})")
            return self._orig()

        torch.cuda.is_available = is_available
        return cuda_touches

    def __exit__(self, *exc):
        torch.cuda.is_available = self._orig
