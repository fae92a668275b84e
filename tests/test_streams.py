"""The byte-stream contract of a pooled connection, the same on every backend:
anyio's exceptions for misuse, end of stream and close, partial writes, and
what each of those does to reuse.  (Each backend has its own stream code: a
protocol on asyncio and uvloop, the socket itself on trio, anyio's TLS
stream for TLS on trio.)"""

from __future__ import annotations

import socket

import anyio
import pytest

import conpool
from helpers_pool import check_quiet, echo, eventually, fd_baseline, fd_count
from servers import EchoServer, TLSEchoServer

pytestmark = pytest.mark.anyio


def endpoint(server: EchoServer) -> conpool.Endpoint:
    return conpool.Endpoint(server.host, server.port)


async def test_a_second_concurrent_reader_is_refused(echo_server: EchoServer) -> None:
    async with conpool.Pool() as pool:
        async with pool.connection(endpoint(echo_server)) as conn:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.receive)
                await anyio.sleep(0.05)  # the first reader is parked
                with pytest.raises(anyio.BusyResourceError):
                    await conn.receive()
                await conn.send(b"x")  # lets the first reader finish
            # The refused reader did not disturb the stream.
            assert await echo(conn, b"after") == b"after"


async def test_a_single_send_larger_than_the_socket_buffers(echo_server: EchoServer) -> None:
    """4 MiB in one send() cannot fit the kernel's buffers: the send goes on
    from where each partial write stopped, and every byte comes back."""
    payload = bytes(range(256)) * (4 << 12)
    async with conpool.Pool() as pool:
        async with pool.connection(endpoint(echo_server)) as conn:
            received = bytearray()

            async def read_back() -> None:
                while len(received) < len(payload):
                    received.extend(await conn.receive())

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_back)
                await conn.send(payload)
            assert received == payload
            first = conn.id
        async with pool.connection(endpoint(echo_server)) as conn:
            assert conn.id == first


async def test_receive_rejects_a_size_below_one(echo_server: EchoServer) -> None:
    async with conpool.Pool() as pool:
        async with pool.connection(endpoint(echo_server)) as conn:
            with pytest.raises(ValueError, match="max_bytes"):
                await conn.receive(0)


async def test_closing_wakes_a_parked_reader_and_is_not_reused(echo_server: EchoServer) -> None:
    async with conpool.Pool() as pool:
        conn = await pool.acquire(endpoint(echo_server))
        first = conn.id
        failures: list[BaseException] = []

        async def reader() -> None:
            try:
                await conn.receive()
            except Exception as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.05)
            await conn.aclose()
        assert len(failures) == 1
        assert isinstance(failures[0], anyio.ClosedResourceError)
        with pytest.raises(anyio.ClosedResourceError):
            await conn.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await conn.receive()
        await pool.release(conn)
        async with pool.connection(endpoint(echo_server)) as again:
            assert again.id != first
        assert pool.stats().endpoints[endpoint(echo_server)].closed == 1


async def test_peer_close_is_end_of_stream_and_not_reused(echo_server: EchoServer) -> None:
    async with conpool.Pool() as pool:
        conn = await pool.acquire(endpoint(echo_server))
        first = conn.id
        await conn.send(b"bye")
        assert await conn.receive() == b"bye"
        await anyio.to_thread.run_sync(echo_server.close_all)
        with pytest.raises(anyio.EndOfStream):
            while True:
                await conn.receive()
        await pool.release(conn)
        async with pool.connection(endpoint(echo_server)) as again:
            assert again.id != first


async def test_send_eof_half_closes_and_is_not_reused(echo_server: EchoServer) -> None:
    async with conpool.Pool() as pool:
        conn = await pool.acquire(endpoint(echo_server))
        first = conn.id
        await conn.send(b"last words")
        await conn.send_eof()
        received = bytearray()
        with pytest.raises(anyio.EndOfStream):
            while True:
                received.extend(await conn.receive())
        # The echo server answered what it had, then closed its side too.
        assert received == b"last words"
        await pool.release(conn)
        await eventually(lambda: pool.stats().endpoints[endpoint(echo_server)].idle == 0)
        async with pool.connection(endpoint(echo_server)) as again:
            assert again.id != first


async def test_a_cancelled_receive_leaves_the_connection_out_of_the_pool(
    echo_server: EchoServer,
) -> None:
    """A read cut short may have lost bytes in flight: not reused."""
    async with conpool.Pool() as pool:
        conn = await pool.acquire(endpoint(echo_server))
        first = conn.id
        with anyio.move_on_after(0.05):
            await conn.receive()
        await pool.release(conn)
        async with pool.connection(endpoint(echo_server)) as again:
            assert again.id != first


@pytest.mark.parametrize(
    "anyio_backend",
    [("asyncio", {}), ("asyncio", {"use_uvloop": True})],
    ids=["asyncio", "uvloop"],
)
async def test_bytes_handed_to_a_reader_cancelled_before_it_ran_are_kept(
    echo_server: EchoServer,
) -> None:
    """On asyncio the bytes of a response go straight to the waiting
    receive().  If that task is cancelled after they were handed over but
    before it ran, they go back in front of the buffer: a reader that goes
    on (on a connection the pool will not reuse) misses nothing."""
    import asyncio

    async with conpool.Pool() as pool:
        conn = await pool.acquire(endpoint(echo_server))
        reader_of = conn._proto  # type: ignore[attr-defined]
        caught = False
        for attempt in range(50):
            task = asyncio.ensure_future(conn.receive())
            await asyncio.sleep(0)  # parked on its future
            await conn.send(b"%d" % attempt)
            for _ in range(100_000):  # until the echo arrives (bounded)
                if task.done() or (reader_of.reader is not None and reader_of.reader.done()):
                    break
                await asyncio.sleep(0)
            if task.done():
                # It ran before this task could cancel it: that is the
                # common order; try again.
                assert await task == b"%d" % attempt
                continue
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.receive() == b"%d" % attempt
            caught = True
            break
        assert caught, "the reader always ran first: the window was never hit"
        assert conn._broken  # a cancelled read: not reused
        await pool.release(conn)


# -- use after release ------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("call", ["send", "receive", "send_eof", "aclose"])
async def test_a_connection_idle_in_the_pool_refuses_its_old_holder(
    echo_server: EchoServer, tls_echo_server: TLSEchoServer, tls: bool, call: str
) -> None:
    """After release, the old reference is refused with a RuntimeError that
    says why, and the refused call changes nothing: the next acquire gets the
    same connection, still in step."""
    if tls:
        ep = conpool.Endpoint(
            "127.0.0.1",
            tls_echo_server.port,
            tls=conpool.TLS(context=tls_echo_server.client_context()),
        )
    else:
        ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        conn = await pool.acquire(ep)
        assert await echo(conn, b"first") == b"first"
        await pool.release(conn)
        with pytest.raises(RuntimeError, match="released to the pool"):
            if call == "send":
                await conn.send(b"stale")
            elif call == "receive":
                await conn.receive()
            elif call == "aclose":
                # A stale holder must not close what someone else may hold.
                await conn.aclose()
            else:
                # (On TLS, where send_eof is not supported, this check comes
                # before that refusal.)
                await conn.send_eof()
        assert not conn._broken and not conn.closed
        again = await pool.acquire(ep)
        assert again is conn
        assert await echo(again, b"second") == b"second"
        await pool.release(again)
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.reused, s.closed) == (1, 1, 0)


async def test_a_health_check_uses_the_connection_it_checks(echo_server: EchoServer) -> None:
    """The health check runs while the connection is still the pool's, and
    its I/O is not taken for a use after release."""
    checked: list[bytes] = []

    async def ping(conn: conpool.Connection) -> bool:
        checked.append(await echo(conn, b"ping"))
        return True

    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(health_check=ping)) as pool:
        for _ in range(3):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"work") == b"work"
        assert checked == [b"ping", b"ping"]
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.reused, s.closed) == (1, 2, 0)


async def test_a_connection_closed_with_unsent_bytes_frees_its_socket() -> None:
    """A send that filled the kernel's buffers (the peer reads nothing) is
    cancelled; closing the connection then drops the bytes still queued
    and frees the socket at once, not when (if ever) the peer reads them.
    On asyncio and uvloop a graceful close would wait for the flush and
    outlive the pool, and the loop (uvloop: ``EBUSY`` from ``loop.close``)."""
    base = await fd_baseline()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        ep = conpool.Endpoint("127.0.0.1", listener.getsockname()[1])
        async with conpool.Pool() as pool:
            async with pool.connection(ep) as conn:
                peer, _ = listener.accept()  # (and never read from)
                with peer:
                    with anyio.move_on_after(0.3) as scope:
                        await conn.send(b"x" * (64 << 20))
                    assert scope.cancelled_caught
                    await conn.aclose()
                    # The listener and the peer's socket are left.
                    await eventually(lambda: fd_count() == base + 2, what="the socket freed")
            check_quiet(pool)
