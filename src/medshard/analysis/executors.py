"""Where batch analysis runs: a local process pool by default, or a Ray cluster.

Both run the same picklable top-level function over the same picklable items, so a batch is
written once. :meth:`Executor.map` yields results as tasks finish (not in input order), which
is what a progress bar wants.

* :class:`LocalExecutor`: a ``spawn`` process pool. Spawn rather than fork because the parent
  holds threads (node-pool HTTP clients) and database connections that must not be copied
  into children; each child opens its own archive and loads the model once.
* :class:`RayExecutor`: the function becomes a Ray task; ``ray.init`` starts a local Ray
  instance or joins ``address``. Ray is an optional extra (``medshard[ray]``); every node
  running tasks needs medshard installed and must reach the home (catalog, master key,
  storage nodes).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from medshard.errors import AnalysisError, ConfigError

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn`` over ``items`` somewhere, yielding results as they complete."""

    name: str

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """Results of ``fn(item)`` for every item, in completion order.

        Raises
        ------
        AnalysisError
            If the workers die (e.g. killed); what they committed before stays committed.
        """
        ...

    def close(self) -> None:
        """Release the workers (and the Ray connection, if this executor opened it)."""
        ...


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LocalExecutor:
    """A ``spawn`` process pool on this machine.

    Parameters
    ----------
    workers
        Processes; default one per usable CPU.
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        if not items:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=min(self.workers, len(items)),
                mp_context=multiprocessing.get_context("spawn"),
            )
        pending: set[Future[R]] = {self._pool.submit(fn, item) for item in items}
        finished = 0
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    finished += 1
                    yield result
        except BrokenProcessPool as exc:
            self._pool = None  # unusable now; its processes are gone
            raise AnalysisError(
                f"a batch worker process died ({exc}); {len(items) - finished} of "
                f"{len(items)} task(s) did not finish. "
                "Findings committed so far are kept: run the same command again to finish "
                "the rest"
            ) from exc
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Ray tasks, on a local Ray instance or the cluster at ``address``.

    Parameters
    ----------
    address
        ``ray://host:port`` or ``auto`` to join a cluster; None starts a local instance with
        ``num_cpus`` CPUs and no dashboard.
    num_cpus
        CPUs of a local instance (ignored when joining a cluster).

    Raises
    ------
    ConfigError
        If Ray is not installed.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("the ray executor needs Ray: pip install 'medshard[ray]'") from exc
        self._ray: Any = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=num_cpus or default_workers(),
                    include_dashboard=False,
                    log_to_driver=False,
                )

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        pending = [remote.remote(item) for item in items]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except ray.exceptions.RayError as exc:
            raise AnalysisError(
                f"a Ray task failed ({exc}); {len(pending)} task(s) did not finish. Findings "
                "committed so far are kept: run the same command again to finish the rest"
            ) from exc
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(
    kind: str, *, workers: int | None = None, ray_address: str | None = None
) -> Executor:
    """The executor called ``kind`` (``local`` or ``ray``)."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(ray_address, num_cpus=workers)
    raise ConfigError(f"unknown executor {kind!r}: use local or ray")
