"""The exception tree, and the context stack that makes a failure read like a story.

Every error the pool raises derives from :class:`PoolError`.  Categories also
derive from the builtins callers already catch: a :class:`ConnectError` is an
:class:`OSError` and a :class:`PoolTimeout` is a :class:`TimeoutError`, so code
written for plain sockets keeps working.

A :class:`ConnectError` carries a *context stack*: each layer of the pool that
saw the failure pushes one line describing what it was doing, innermost first.
The rendering (``str(exc)``, and so every printed traceback) is the underlying
error's own text followed by those lines::

    conpool.ConnectError: [Errno 111] Connection refused
      connecting to tcp:127.0.0.1:8088
      connecting to localhost:8088
      after 3 retry attempts (4 attempts in all)
"""

from __future__ import annotations

import errno as _errno
import os
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = [
    "ConnectError",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ResolveError",
    "describe",
]


class PoolError(Exception):
    """The root of every error raised by conpool."""


class ConnectError(PoolError, OSError):
    """No connection could be made to an endpoint.

    :ivar endpoint: the :class:`~conpool.Endpoint` the pool tried to reach.
    :ivar errors: every underlying exception, one per attempt, oldest first.
    :ivar attempts: how many attempts were made (``len(errors)``).
    :ivar context: what the pool was doing, innermost first, one line each.
    """

    endpoint: Endpoint | None
    errors: tuple[BaseException, ...]
    context: tuple[str, ...]

    def __init__(
        self,
        message: str,
        *,
        endpoint: Endpoint | None = None,
        errors: Sequence[BaseException] = (),
        context: Sequence[str] = (),
    ) -> None:
        # OSError's constructor interprets (errno, strerror) pairs; pass one
        # argument so ``args`` stays simple, then copy the errno across so
        # ``exc.errno == errno.ECONNREFUSED`` works as it would on a socket.
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.errors = tuple(errors)
        self.context = tuple(context)
        last = self.errors[-1] if self.errors else None
        if isinstance(last, OSError) and last.errno is not None:
            self.errno = last.errno
            self.strerror = last.strerror

    @property
    def attempts(self) -> int:
        return len(self.errors)

    def add_context(self, line: str) -> None:
        """Push one more line, outer to all the lines already there."""
        self.context = (*self.context, line)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        return self.message + "".join("\n  " + line for line in self.context)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.endpoint, self.errors, self.context))


def _rebuild(
    cls: type[ConnectError],
    message: str,
    endpoint: Endpoint | None,
    errors: tuple[BaseException, ...],
    context: tuple[str, ...],
) -> ConnectError:
    return cls(message, endpoint=endpoint, errors=errors, context=context)


class ResolveError(ConnectError):
    """The endpoint's host name did not resolve to any address."""


class SocketSetupError(OSError):
    """A socket option or the source address was refused by the kernel
    (internal: it reaches users inside a :class:`ConnectError`): a
    configuration error, which retrying cannot fix.  Its one argument is the
    whole message, errno in the words, so that the story keeps naming the
    option or the address."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection slot became free within ``acquire_timeout``, or the
    ``max_waiters`` queue was already full."""


class PoolClosed(PoolError):
    """The pool was closed before or while the connection was requested."""


for _cls in (PoolError, ConnectError, ResolveError, PoolTimeout, PoolClosed):
    _cls.__module__ = "conpool"


def describe(exc: BaseException) -> str:
    """One line of text for an underlying error, the first line of a story.

    An :class:`OSError` that carries an errno reads as the C library words it
    (``[Errno 111] Connection refused``) whatever the event loop wrapped it in:
    asyncio says "Connect call failed", trio says something else, and a user
    comparing logs across backends should see the same sentence.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return f"TLS certificate verification failed: {why}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, TimeoutError) and not exc.args:
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in _errno.errorcode:
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    text = str(exc)
    return text if text else type(exc).__name__
