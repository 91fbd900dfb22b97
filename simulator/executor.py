"""Run many independent tasks on a pool of workers: a local process pool or a Ray cluster.

Pure infrastructure (it imports nothing of clusterplan's), shared by the sweeps, the capacity probes
of `plan serve` and the validation suites. Every executor has the same contract:

    with LocalExecutor(jobs=4) as ex:          # or RayExecutor(address="auto")
        values = ex.map(fn, items)             # fn(item) for each item, results in item order
        outcomes = ex.run(fn, items, on_done=print, capture_errors=True)

- Results come back in the order of `items`, whatever order the workers finish in, so a run gives
  the same answer on any executor and any number of workers (given a deterministic `fn`).
- An exception raised by `fn` is the task's answer: `map` raises it (the first in item order) and
  `run(capture_errors=True)` records it in the task's `Outcome` without stopping the others.
- A worker that dies (killed, out of memory, segfault) is not the task's answer: its unfinished
  tasks are submitted again, up to `max_retries` times each, and `Outcome.retries` counts the
  resubmissions. The local pool is rebuilt after a death; on Ray the driver resubmits the task
  (the remote function has Ray's own `max_retries=0`, so that every retry is counted here).
- `on_done(outcome)` is called in the calling thread as each task finishes (completion order):
  progress bars, append-only result logs.
- KeyboardInterrupt (Ctrl-C) stops the workers and propagates; finished tasks have already been
  passed to `on_done`.

`fn` and the items must pickle (module-level functions; Ray workers import them by name).
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 3


@dataclass
class Outcome:
    """What became of one task."""
    index: int
    value: Any = None
    error: str | None = None          # "TypeName: message" when fn raised, or the worker kept dying
    error_type: str | None = None     # the exception's class name; "WorkerDied" after max_retries
    exception: BaseException | None = field(default=None, repr=False)
    retries: int = 0                  # resubmissions after a worker died
    worker: str = ""                  # host:pid that ran the last attempt
    elapsed_s: float = 0.0            # time fn ran in the worker (last attempt)

    @property
    def ok(self) -> bool:
        return self.error is None


class WorkerDied(RuntimeError):
    """A task whose worker died more than max_retries times."""


def _call(fn, index: int, item):
    """Run one task in a worker: (index, ok, value or exception, "host:pid", seconds)."""
    t0 = time.perf_counter()
    try:
        value, ok = fn(item), True
    except Exception as e:  # noqa: BLE001 - a task's error is its answer
        value, ok = _portable(e), False
    return index, ok, value, f"{socket.gethostname()}:{os.getpid()}", time.perf_counter() - t0


def _portable(e: BaseException) -> BaseException:
    """`e` if it survives pickling (so the caller can re-raise it as is), else a RuntimeError
    carrying its type name and message."""
    import copy
    import pickle
    try:
        pickle.dumps(e)
        copy.copy(e)  # rebuilds it from its reduce tuple, as unpickling in the parent would
        return e
    except Exception:  # noqa: BLE001
        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        return RuntimeError(text)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


class Executor:
    """Common driver logic; subclasses provide `_run_all`."""
    name = "?"
    workers = 1

    def __init__(self, max_retries: int = DEFAULT_MAX_RETRIES):
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be an integer >= 0")
        self.max_retries = max_retries

    def run(self, fn: Callable, items: Iterable, on_done: Callable | None = None,
            capture_errors: bool = True) -> list[Outcome]:
        """Outcomes of fn(item) for every item, in item order. With capture_errors False the
        first task error (in completion order) stops the run and is raised."""
        items = list(items)
        out: list[Outcome | None] = [None] * len(items)

        def finish(o: Outcome):
            out[o.index] = o
            if o.error is not None and not capture_errors:
                raise o.exception
            if on_done is not None:
                on_done(o)
        if items:
            self._run_all(fn, items, finish)
        return out  # type: ignore[return-value]

    def map(self, fn: Callable, items: Iterable) -> list:
        """[fn(item) for item in items], computed by the workers; raises the first error in item
        order (the exception fn raised, when it pickles)."""
        outs = self.run(fn, items, capture_errors=True)
        for o in outs:
            if o.error is not None:
                raise o.exception
        return [o.value for o in outs]

    def _outcome(self, index, ok, value, worker, elapsed, retries) -> Outcome:
        if ok:
            return Outcome(index, value=value, retries=retries, worker=worker, elapsed_s=elapsed)
        return Outcome(index, error=f"{type(value).__name__}: {_one_line(value)}", error_type=type(value).__name__,
                       exception=value, retries=retries, worker=worker, elapsed_s=elapsed)

    def _gave_up(self, index, retries, why: str) -> Outcome:
        e = WorkerDied(f"worker died {retries} times running this task (last: {why})")
        return Outcome(index, error=f"WorkerDied: {_one_line(e)}", error_type="WorkerDied", exception=e,
                       retries=retries - 1)

    def _run_all(self, fn, items, finish):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers, "max_retries": self.max_retries}

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class SerialExecutor(Executor):
    """Every task in this process, one after another (no isolation: a crash ends the run)."""
    name = "serial"

    def _run_all(self, fn, items, finish):
        for i, item in enumerate(items):
            finish(self._outcome(*_call(fn, i, item), retries=0))


class LocalExecutor(Executor):
    """A pool of `jobs` worker processes on this machine (default: the CPU count). Workers are
    forked where the platform can (they inherit what the parent has loaded, e.g. kernel tables),
    else spawned. At most `jobs` tasks are in flight, so a worker death interrupts no more than
    the tasks that were running; those are resubmitted to a fresh pool."""
    name = "local"

    def __init__(self, jobs: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 start_method: str | None = None):
        super().__init__(max_retries)
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ValueError(f"jobs={jobs!r} must be a positive integer")
        self.workers = jobs or os.cpu_count() or 1
        methods = multiprocessing.get_all_start_methods()
        self.start_method = start_method or ("fork" if "fork" in methods else "spawn")

    def _run_all(self, fn, items, finish):
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool
        todo = list(range(len(items)))[::-1]  # a stack: pop() takes the lowest index first
        retries = [0] * len(items)
        ctx = multiprocessing.get_context(self.start_method)
        while todo:
            pool = ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=ctx)
            running: dict = {}
            broken = None
            try:
                while todo or running:
                    while todo and len(running) < self.workers:
                        i = todo.pop()
                        try:
                            running[pool.submit(_call, fn, i, items[i])] = i
                        except BrokenProcessPool as e:  # died between two submissions
                            todo.append(i)  # never ran: not a retry
                            broken = e
                            break
                    if broken is not None or not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in sorted(done, key=lambda f: running[f]):
                        i = running.pop(f)
                        exc = f.exception()
                        if exc is None:
                            finish(self._outcome(*f.result(), retries=retries[i]))
                        elif isinstance(exc, BrokenProcessPool):
                            broken = exc
                            running[f] = i  # lost with the pool
                        else:  # the pool could not run it (e.g. an item that does not pickle)
                            finish(self._outcome(i, False, _portable(exc), "", 0.0, retries[i]))
                    if broken is not None:
                        break
            except BaseException:
                _stop(pool)
                raise
            if broken is None:
                pool.shutdown(wait=True)
                continue
            # A worker died: every task still running in this pool is lost; retry those.
            _stop(pool)
            lost = sorted(set(running.values()))
            for i in lost:
                retries[i] += 1
                if retries[i] > self.max_retries:
                    finish(self._gave_up(i, retries[i], _one_line(broken) or "process pool broken"))
                else:
                    todo.append(i)
            todo.sort(reverse=True)


def _stop(pool) -> None:
    """Shut a process pool down now: queued tasks cancelled, worker processes terminated."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayExecutor(Executor):
    """Tasks on a Ray cluster: `address` "auto" (the running cluster this machine belongs to), a
    cluster address ("ray://host:10001", "host:6379"), or None (use an initialised Ray, else start
    a local one for this executor, with `num_cpus` CPUs; it is shut down by close())."""
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES, max_in_flight: int | None = None):
        super().__init__(max_retries)
        try:
            import ray
        except ImportError:
            raise ImportError("the ray executor needs Ray: pip install 'clusterplan[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address is None:
                kw["num_cpus"] = num_cpus
            ray.init(address=address, **kw)
            self._started = True
        self.address = address
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # Enough tasks queued to keep every CPU busy; a death then loses only those in flight.
        self.max_in_flight = max_in_flight or 4 * self.workers
        self._remote = ray.remote(_call).options(max_retries=0, num_cpus=1)

    def _run_all(self, fn, items, finish):
        ray = self._ray
        from ray.exceptions import RayError, RayTaskError
        fn_ref = ray.put(fn)
        todo = list(range(len(items)))[::-1]
        retries = [0] * len(items)
        running: dict = {}
        try:
            while todo or running:
                while todo and len(running) < self.max_in_flight:
                    i = todo.pop()
                    running[self._remote.remote(fn_ref, i, items[i])] = i
                refs = list(running)
                ready, _ = ray.wait(refs, num_returns=1)
                done = set(ready) | set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
                for ref in sorted(done, key=lambda r: running[r]):
                    i = running.pop(ref)
                    try:
                        res = ray.get(ref)
                    except RayTaskError as e:  # _call catches fn's errors: this is Ray's own
                        finish(self._outcome(i, False, _portable(e), "", 0.0, retries[i]))
                        continue
                    except RayError as e:  # the worker (or its node) died
                        retries[i] += 1
                        if retries[i] > self.max_retries:
                            finish(self._gave_up(i, retries[i], type(e).__name__))
                        else:
                            todo.append(i)
                        continue
                    finish(self._outcome(*res, retries=retries[i]))
        except BaseException:
            for ref in running:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise

    def describe(self) -> dict:
        return {**super().describe(), "address": self.address or "local"}

    def close(self):
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def make_executor(name: str = "local", jobs: int | None = None, ray_address: str | None = None,
                  max_retries: int = DEFAULT_MAX_RETRIES) -> Executor:
    """An executor by name: "local" (a process pool of `jobs` workers) or "ray" (`ray_address`:
    "auto", an address, or None for a local Ray with `jobs` CPUs)."""
    if name == "local":
        return LocalExecutor(jobs, max_retries)
    if name == "ray":
        return RayExecutor(ray_address, num_cpus=jobs if ray_address is None else None, max_retries=max_retries)
    raise ValueError(f"executor {name!r}; valid: {', '.join(EXECUTORS)}")
