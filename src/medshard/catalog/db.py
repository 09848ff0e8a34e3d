"""Catalog engine and sessions, on SQLite (default) or PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and writers in one process are serialised by a
lock so concurrent importers never see ``database is locked``; PostgreSQL needs no such lock.
The schema is created and upgraded only by Alembic (:func:`migrate`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from medshard.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """An engine tuned for the catalog's access pattern on either backend."""
    if url.startswith("sqlite"):
        # Every thread that writes or reads keeps its connection: a connection beyond the pool
        # is closed on return and the next one pays the connect and the pragmas again
        # (measured: 6% of the service's time under STOW-RS with pool_size=8).
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=48,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        engine = create_engine(url, pool_size=10, max_overflow=10)
        _ping_when_idle(engine)
        return engine
    raise ConfigError(f"unsupported catalog URL {url!r}: use sqlite:/// or postgresql+psycopg://")


#: A pooled PostgreSQL connection idle this long is pinged before it is handed out.
IDLE_PING_S = 10.0


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection on checkout only if it sat idle in the pool for IDLE_PING_S.

    ``pool_pre_ping`` pings on every checkout: a round trip per session, which under load
    also waits for the GIL again (a QIDO-RS search made five round trips, one of them the
    ping). A connection the server dropped while it sat idle (an idle timeout, a restart
    during a quiet spell) is still found and replaced here. One dropped within IDLE_PING_S of
    its last use fails the one request that next takes it, and SQLAlchemy's disconnect
    handling then empties the pool (tests/catalog/test_pg_pool.py shows both).
    """

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"stale catalog connection: {exc}") from exc
        if not alive:
            raise DisconnectionError("stale catalog connection")


_SCRATCH = "medshard.transaction_scratch"


def transaction_scratch(session: Session) -> dict[str, Any]:
    """Scratch space that lives as long as the session's current transaction.

    Work that many writes of one group commit repeat (a care-team touch, an audit chain
    append) is done once per transaction through it. Emptied when the transaction commits or
    rolls back, so nothing leaks into the session's next transaction.
    """
    scratch: dict[str, Any] = session.info.setdefault(_SCRATCH, {})
    return scratch


def peek_scratch(session: Session) -> dict[str, Any] | None:
    """The current transaction's scratch space, if anything was put there."""
    return session.info.get(_SCRATCH)


@event.listens_for(Session, "after_commit")
def _forget_scratch_on_commit(session: Session) -> None:
    session.info.pop(_SCRATCH, None)


@event.listens_for(Session, "after_soft_rollback")
def _forget_scratch_on_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction, not a savepoint
        session.info.pop(_SCRATCH, None)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the catalog at ``url`` to the newest schema (``alembic upgrade head``)."""
    command.upgrade(alembic_config(url), "head")


class Catalog:
    """Owns the engine; hands out sessions whose transactions commit on success."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        #: Reads outside a transaction on PostgreSQL (autocommit): no BEGIN and ROLLBACK
        #: round trips. Under READ COMMITTED every statement takes its own snapshot in a
        #: transaction too, so a read sees nothing different.
        self._reads = (
            self._factory
            if url.startswith("sqlite")
            else sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
            )
        )
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = threading.RLock()
        self._group_lock = threading.Lock()
        self._group_queue: list[tuple[Callable[[Session], Any], Future[Any]]] = []
        self._group_leader = False
        #: Run by a group commit's leader inside the group's transaction, after every piece
        #: of work ran and before COMMIT (the archive's object journal); raising fails the
        #: group as a failed commit would. What it returns, if anything, is called once the
        #: transaction has ended, committed or rolled back.
        self.before_group_commit: Callable[[Session], Callable[[], None] | None] | None = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (no commit)."""
        with self._factory() as session:
            yield session

    @contextmanager
    def reads(self) -> Iterator[Session]:
        """A session for the hot read paths (searches, retrieves): statements that only
        read, run without a transaction on PostgreSQL. Never write through it: each
        statement would commit on its own."""
        with self._reads() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on error."""
        lock = self._write_lock if self.is_sqlite else nullcontext()
        with lock, self._factory() as session, session.begin():
            yield session

    def commit_grouped(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a transaction shared with every other caller waiting now.

        Group commit: the first caller to find no commit under way becomes the leader and
        commits, in one transaction (one fsync), everything queued meanwhile; the others
        wait for their result. Ingest makes one small transaction per instance, so this turns
        N durable commits into one. If the shared transaction fails, each piece of work is
        retried alone, so one bad item (e.g. a duplicate) never fails the others.
        """
        future: Future[T] = Future()
        with self._group_lock:
            self._group_queue.append((work, future))
            lead = not self._group_leader
            if lead:
                self._group_leader = True
        if lead:
            self._lead_group_commits()
        return future.result()

    def _lead_group_commits(self) -> None:
        batch: list[tuple[Callable[[Session], Any], Future[Any]]] = []
        try:
            while True:
                with self._group_lock:
                    batch, self._group_queue = self._group_queue, []
                    if not batch:
                        self._group_leader = False
                        return
                self._commit_batch(batch)
        except BaseException as exc:  # never leave waiters hanging, whatever happened
            with self._group_lock:
                stranded, self._group_queue = batch + self._group_queue, []
                self._group_leader = False
            for _work, fut in stranded:
                if not fut.done():
                    fut.set_exception(exc)
            raise

    def _commit_batch(self, batch: list[tuple[Callable[[Session], Any], Future[Any]]]) -> None:
        try:
            results = self._commit_works([work for work, _f in batch])
        except Exception:
            for work, fut in batch:  # isolate the failing item(s)
                try:
                    result = self._commit_works([work])[0]
                except Exception as exc:
                    fut.set_exception(exc)
                else:  # only once its transaction has committed
                    fut.set_result(result)
        else:
            for (_w, fut), result in zip(batch, results, strict=True):
                fut.set_result(result)

    def _commit_works(self, works: list[Callable[[Session], Any]]) -> list[Any]:
        settled: Callable[[], None] | None = None
        try:
            with self.transaction() as session:
                results = [work(session) for work in works]
                if self.before_group_commit is not None:
                    settled = self.before_group_commit(session)
        finally:
            if settled is not None:
                settled()
        return results

    def dispose(self) -> None:
        self.engine.dispose()
