"""User callbacks on pool events, and the dispatcher that feeds them.

Hooks are optional and cost nothing when none is registered: the pool keeps
its ``_trace`` attribute at None and every trace point is one attribute check.
A hook that raises is switched off and logged once; it never breaks the pool
(the rule trio's instrumentation follows).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import TypeAlias

from ._trace import Event, Tracer

__all__ = ["Hook", "Hooks", "LogExporter", "logger"]

logger = logging.getLogger("conpool")

Hook: TypeAlias = Callable[[Event], object]

# Event kinds that mark a failure: logged at WARNING-worthy detail by LogExporter.
_FAILURES = (
    "connect.failed",
    "resolve.failed",
    "acquire.failed",
    "tls.failed",
    "proxy.handshake.failed",
    "hook.disabled",
    "on_connect.failed",
    "reset.failed",
)


def _matches(pattern: str, kind: str) -> bool:
    if pattern == "*" or pattern == kind:
        return True
    return pattern.endswith(".*") and kind.startswith(pattern[:-1])


class Hooks:
    """The registered hooks of one pool, and the dispatch of each event to
    the tracer and to the hooks whose pattern matches its kind.

    Patterns: an exact kind (``"conn.close"``), a scope (``"connect.*"``) or
    ``"*"`` for every event.
    """

    def __init__(self) -> None:
        self._hooks: list[tuple[str, Hook]] = []
        self.tracer: Tracer | None = None

    def __bool__(self) -> bool:
        return bool(self._hooks) or self.tracer is not None

    def __len__(self) -> int:
        return len(self._hooks)

    def add(self, pattern: str, hook: Hook) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"hook pattern must be a non-empty str, got {pattern!r}")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {hook!r}")
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
            getattr(hook, "__call__", None)  # noqa: B004 - an async __call__ method
        ):
            raise TypeError(
                f"hook must be a plain function, not async: {hook!r} would never be awaited"
            )
        self._hooks.append((pattern, hook))

    def remove(self, hook: Hook) -> None:
        before = len(self._hooks)
        self._hooks = [(p, h) for p, h in self._hooks if h is not hook]
        if len(self._hooks) == before:
            raise ValueError(f"{hook!r} is not registered")

    def __call__(
        self,
        kind: str,
        endpoint: object = "",
        address: str = "",
        conn_id: int = 0,
        duration_ns: int | None = None,
        detail: str = "",
    ) -> None:
        ts = time.monotonic_ns()
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(kind, endpoint, address, conn_id, duration_ns, detail, ts)
        if not self._hooks:
            return
        event = Event(
            ts, kind, str(endpoint) if endpoint else "", address, conn_id, duration_ns, detail
        )
        disabled: list[Hook] = []
        for pattern, hook in list(self._hooks):
            if not _matches(pattern, kind) or any(hook is d for d in disabled):
                continue
            try:
                hook(event)
            except Exception:
                disabled.append(hook)
                self._hooks = [(p, h) for p, h in self._hooks if h is not hook]
                logger.exception("conpool: hook %r raised on %s and is now disabled", hook, kind)
        # Reported after every hook saw this event, so that all of them see
        # the events in the same order as the tracer.
        if kind != "hook.disabled":
            for hook in disabled:
                self("hook.disabled", endpoint, address, conn_id, None, repr(hook))


class LogExporter:
    """A hook that writes each event to the ``conpool`` logger.

    ``pool.add_hook("*", conpool.LogExporter())``.  Events log at ``level``
    (DEBUG by default); failures log at ``failure_level`` with their full
    stacked error text.

    :param logger: the logger to use; ``logging.getLogger("conpool")`` if None.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        level: int = logging.DEBUG,
        failure_level: int = logging.DEBUG,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger("conpool")
        self.level = level
        self.failure_level = failure_level

    def __call__(self, event: Event) -> None:
        level = self.failure_level if event.kind in _FAILURES else self.level
        if not self.logger.isEnabledFor(level):
            return
        parts = [event.kind]
        if event.endpoint:
            parts.append(event.endpoint)
        if event.address:
            parts.append(f"via {event.address}")
        if event.conn_id:
            parts.append(f"conn #{event.conn_id}")
        if event.duration_ns is not None:
            parts.append(f"{event.duration_ns / 1e6:.3f} ms")
        text = " ".join(parts)
        if event.detail:
            text += ": " + event.detail
        self.logger.log(level, "%s", text)

    def __repr__(self) -> str:
        return f"LogExporter(logger={self.logger.name!r}, level={self.level})"


LogExporter.__module__ = "conpool"
