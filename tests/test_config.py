"""Config: documented defaults, immutability, and a named error for every bad value."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conpool._config import BALANCE_POLICIES, Config


async def _healthy(conn: object) -> bool:
    return True


def test_defaults_match_the_api_contract() -> None:
    config = Config()
    assert config.max_connections_per_endpoint == 10
    assert config.max_connections is None
    assert config.max_idle_time == 60.0
    assert config.max_connection_lifetime == 300.0
    assert config.max_connection_uses is None
    assert config.health_check is None
    assert config.connect_timeout == 10.0
    assert config.connect_retries == 3
    assert config.retry_backoff == 0.1
    assert config.retry_backoff_max == 5.0
    assert config.acquire_timeout is None
    assert config.max_waiters is None
    assert config.balance == "least-connections"


def test_extra_defaults() -> None:
    config = Config()
    assert config.max_ejected_share == 0.5
    assert config.eject_after_failures == 3
    assert config.eject_time == 1.0
    assert config.eject_time_max == 30.0
    assert config.happy_eyeballs_delay == 0.25
    assert config.balance_seed is None
    assert config.sweep_interval is None
    assert config.lifetime_jitter == 0.0
    assert Config(lifetime_jitter=0).lifetime_jitter == 0.0
    assert isinstance(Config(lifetime_jitter=0).lifetime_jitter, float)


def test_balance_policies() -> None:
    assert BALANCE_POLICIES == ("least-connections", "round-robin", "power-of-two")
    for policy in BALANCE_POLICIES:
        assert Config(balance=policy).balance == policy


def test_frozen_and_keyword_only() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_connections = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config(5)  # type: ignore[call-arg]
    assert not hasattr(config, "__dict__")


def test_equality_hash_and_replace() -> None:
    assert Config() == Config()
    assert hash(Config()) == hash(Config())
    changed = dataclasses.replace(Config(), max_connections=20)
    assert changed.max_connections == 20
    with pytest.raises(ValueError, match="max_connections"):
        dataclasses.replace(Config(), max_connections=0)


def test_numbers_are_stored_as_float() -> None:
    config = Config(max_idle_time=5, connect_timeout=1, retry_backoff=0, eject_time_max=30)
    assert type(config.max_idle_time) is float
    assert type(config.connect_timeout) is float
    assert type(config.retry_backoff) is float
    assert config == Config(
        max_idle_time=5.0, connect_timeout=1.0, retry_backoff=0.0, eject_time_max=30.0
    )


def test_accepted_edge_values() -> None:
    config = Config(
        max_connections=1,
        max_connections_per_endpoint=1,
        max_idle_time=math.inf,
        max_connection_lifetime=math.inf,
        max_connection_uses=1,
        health_check=_healthy,
        connect_timeout=None,
        connect_retries=0,
        retry_backoff=0,
        retry_backoff_max=0,
        acquire_timeout=0,
        max_waiters=0,
        max_ejected_share=1,
        eject_after_failures=1,
        eject_time=2.0,
        eject_time_max=2.0,
        happy_eyeballs_delay=0.001,
        balance_seed=0,
        sweep_interval=0.5,
    )
    assert config.max_idle_time == math.inf
    assert config.acquire_timeout == 0.0
    assert config.max_waiters == 0
    assert config.health_check is _healthy
    assert Config(connect_timeout=math.inf, acquire_timeout=math.inf).connect_timeout == math.inf
    assert Config(balance_seed=-(2**70)).balance_seed == -(2**70)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_connections_per_endpoint", 0, "max_connections_per_endpoint must be >= 1, got 0"),
        ("max_connections_per_endpoint", -1, "max_connections_per_endpoint must be >= 1, got -1"),
        ("max_connections", 0, "max_connections must be >= 1, got 0"),
        ("max_connection_uses", 0, "max_connection_uses must be >= 1, got 0"),
        ("connect_retries", -1, "connect_retries must be >= 0, got -1"),
        ("max_waiters", -1, "max_waiters must be >= 0, got -1"),
        ("eject_after_failures", 0, "eject_after_failures must be >= 1, got 0"),
        ("max_idle_time", 0, "max_idle_time must be > 0, got 0"),
        ("max_idle_time", -1.5, "max_idle_time must be > 0, got -1.5"),
        ("max_idle_time", math.nan, "max_idle_time must be a number, got nan"),
        ("max_idle_time", -math.inf, "max_idle_time must be > 0, got -inf"),
        ("max_connection_lifetime", 0.0, "max_connection_lifetime must be > 0, got 0.0"),
        ("max_connection_lifetime", math.nan, "max_connection_lifetime must be a number"),
        ("connect_timeout", 0, "connect_timeout must be > 0, got 0"),
        ("connect_timeout", -1, "connect_timeout must be > 0, got -1"),
        ("connect_timeout", math.nan, "connect_timeout must be a number, got nan"),
        ("acquire_timeout", -0.1, "acquire_timeout must be >= 0, got -0.1"),
        ("acquire_timeout", math.nan, "acquire_timeout must be a number, got nan"),
        ("retry_backoff", -0.1, "retry_backoff must be >= 0, got -0.1"),
        ("retry_backoff", math.inf, "retry_backoff must be finite, got inf"),
        ("retry_backoff", 6.0, "retry_backoff_max must be >= retry_backoff (6.0), got 5.0"),
        ("retry_backoff_max", 0.05, "retry_backoff_max must be >= retry_backoff (0.1), got 0.05"),
        ("retry_backoff_max", math.inf, "retry_backoff_max must be finite, got inf"),
        ("max_ejected_share", 0, "max_ejected_share must be > 0, got 0"),
        ("max_ejected_share", 1.01, "max_ejected_share must be in (0, 1], got 1.01"),
        ("max_ejected_share", math.nan, "max_ejected_share must be a number, got nan"),
        ("eject_time", 0, "eject_time must be > 0, got 0"),
        ("eject_time", math.inf, "eject_time must be finite, got inf"),
        ("eject_time", 31.0, "eject_time_max must be >= eject_time (31.0), got 30.0"),
        ("eject_time_max", 0.5, "eject_time_max must be >= eject_time (1.0), got 0.5"),
        ("happy_eyeballs_delay", 0, "happy_eyeballs_delay must be > 0, got 0"),
        ("happy_eyeballs_delay", math.inf, "happy_eyeballs_delay must be finite, got inf"),
        ("sweep_interval", 0, "sweep_interval must be > 0, got 0"),
        ("sweep_interval", math.inf, "sweep_interval must be finite, got inf"),
        ("max_idle_time", 10**400, "max_idle_time is too large"),
        ("lifetime_jitter", 1.0, "lifetime_jitter must be in [0, 1), got 1.0"),
        ("lifetime_jitter", -0.1, "lifetime_jitter must be in [0, 1), got -0.1"),
        ("lifetime_jitter", math.nan, "lifetime_jitter must be in [0, 1), got nan"),
        ("balance", "random", "balance must be one of 'least-connections', 'round-robin'"),
        ("balance", "Round-Robin", "got 'Round-Robin'"),
    ],
)
def test_value_errors_name_field_and_value(field: str, value: object, message: str) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(**kwargs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_connections_per_endpoint", 1.0, "max_connections_per_endpoint must be an int"),
        ("max_connections_per_endpoint", True, "max_connections_per_endpoint must be an int"),
        ("max_connections_per_endpoint", None, "max_connections_per_endpoint must be an int"),
        ("max_connections", "10", "max_connections must be an int or None, got str '10'"),
        ("max_connections", False, "max_connections must be an int or None, got bool False"),
        ("max_connection_uses", 2.5, "max_connection_uses must be an int or None"),
        ("connect_retries", None, "connect_retries must be an int"),
        ("max_waiters", 1.0, "max_waiters must be an int or None"),
        ("eject_after_failures", True, "eject_after_failures must be an int"),
        ("balance_seed", 1.5, "balance_seed must be an int or None"),
        ("balance_seed", True, "balance_seed must be an int or None"),
        ("max_idle_time", None, "max_idle_time must be a number, got NoneType"),
        ("max_idle_time", True, "max_idle_time must be a number, got bool"),
        ("max_idle_time", "60", "max_idle_time must be a number, got str"),
        ("max_connection_lifetime", None, "max_connection_lifetime must be a number"),
        ("connect_timeout", "10", "connect_timeout must be a number or None"),
        ("connect_timeout", False, "connect_timeout must be a number or None, got bool"),
        ("acquire_timeout", b"1", "acquire_timeout must be a number or None"),
        ("retry_backoff", None, "retry_backoff must be a number"),
        ("retry_backoff_max", None, "retry_backoff_max must be a number"),
        ("max_ejected_share", None, "max_ejected_share must be a number"),
        ("eject_time", None, "eject_time must be a number"),
        ("eject_time_max", None, "eject_time_max must be a number"),
        ("happy_eyeballs_delay", None, "happy_eyeballs_delay must be a number"),
        ("sweep_interval", "1", "sweep_interval must be a number or None"),
        ("lifetime_jitter", True, "lifetime_jitter must be a number, got bool"),
        ("lifetime_jitter", None, "lifetime_jitter must be a number, got NoneType"),
        ("balance", None, "balance must be a str"),
        ("balance", 1, "balance must be a str"),
        ("health_check", True, "health_check must be an async callable or None"),
        ("health_check", "ping", "health_check must be an async callable or None"),
    ],
)
def test_type_errors_name_field(field: str, value: object, message: str) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(TypeError, match=message):
        Config(**kwargs)


_FIELDS = [field.name for field in dataclasses.fields(Config)]

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-3, 100),
    st.floats(),
    st.floats(-1, 100),
    st.sampled_from(BALANCE_POLICIES),
    st.text(max_size=10),
    st.binary(max_size=4),
    st.just(_healthy),
    st.just(object()),
)


@settings(max_examples=600, deadline=None)
@given(field=st.sampled_from(_FIELDS), value=_values)
def test_any_value_constructs_or_names_the_field(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {field: value}
    try:
        config = Config(**kwargs)
    except (TypeError, ValueError) as exc:
        assert field in str(exc), str(exc)
        return
    stored = getattr(config, field)
    # Seconds given as an int are stored as a float (so 2**53 + 1 rounds).
    as_float = isinstance(value, int) and isinstance(stored, float) and stored == float(value)
    # Socket options are stored as a tuple, a source address canonically.
    as_tuple = field == "socket_options" and stored == tuple(value)  # type: ignore[arg-type]
    canonical = (
        field == "local_address"
        and isinstance(value, str)
        and stored == str(ipaddress.ip_address(value))
    )
    assert stored == value or stored is value or as_float or as_tuple or canonical
    assert type(value) is not bool


@settings(max_examples=300, deadline=None)
@given(values=st.fixed_dictionaries({}, optional={name: _values for name in _FIELDS}))
def test_any_combination_constructs_or_names_a_field(values: dict[str, object]) -> None:
    try:
        Config(**values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        assert any(name in str(exc) for name in values), str(exc)


# -- lifecycle fields --------------------------------------------------------------


async def _on_connect(conn: object) -> None:
    return None


def test_lifecycle_defaults() -> None:
    config = Config()
    assert config.min_idle == 0
    assert config.on_connect is None
    assert config.reset is None
    assert config.socket_options == ()
    assert config.local_address is None


def test_lifecycle_fields_accepted() -> None:
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
        (socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bytearray(b"lo")),
    ]
    config = Config(
        min_idle=10,
        on_connect=_on_connect,
        reset=_healthy,
        socket_options=options,  # type: ignore[arg-type]  # a bytearray too, at run time
        local_address="127.0.0.5",
    )
    assert config.min_idle == 10
    assert config.on_connect is _on_connect and config.reset is _healthy
    # A tuple of tuples, bytes-like values as bytes: the config stays hashable.
    assert config.socket_options == (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
        (socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo"),
    )
    assert isinstance(config.socket_options[2][2], bytes)
    hash(config)
    assert config.local_address == "127.0.0.5"
    assert Config(local_address="0:0::1").local_address == "::1"
    assert Config(min_idle=2, max_connections=2).min_idle == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_idle": -1}, "min_idle must be >= 0, got -1"),
        ({"min_idle": 11}, "min_idle must be <= max_connections_per_endpoint (10), got 11"),
        (
            {"min_idle": 3, "max_connections_per_endpoint": 2},
            "min_idle must be <= max_connections_per_endpoint (2), got 3",
        ),
        ({"min_idle": 3, "max_connections": 2}, "min_idle must be <= max_connections (2), got 3"),
        ({"socket_options": [(1, -1, 1)]}, "socket_options[0]: option must be in 0..2147483647"),
        ({"socket_options": [(2**31, 1, 1)]}, "socket_options[0]: level must be in 0..2147483647"),
        ({"socket_options": [(1, 9, 2**31)]}, "socket_options[0]: value must fit a C int"),
        ({"socket_options": [(1, 9, -(2**31) - 1)]}, "socket_options[0]: value must fit a C int"),
        ({"socket_options": [(1, 25, b"x" * 1025)]}, "socket_options[0]: a bytes value must be"),
        ({"local_address": "localhost"}, "local_address must be an IP address, got 'localhost'"),
        ({"local_address": "127.0.0.256"}, "local_address must be an IP address"),
        ({"local_address": ""}, "local_address must be an IP address"),
        ({"local_address": "fe80::1%eth0"}, "local_address must not carry an IPv6 zone id"),
    ],
)
def test_lifecycle_value_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_idle": 1.0}, "min_idle must be an int"),
        ({"min_idle": True}, "min_idle must be an int"),
        ({"min_idle": None}, "min_idle must be an int"),
        ({"on_connect": "AUTH"}, "on_connect must be an async callable or None"),
        ({"reset": 1}, "reset must be an async callable or None"),
        ({"socket_options": None}, "socket_options must be a sequence"),
        ({"socket_options": "SO_KEEPALIVE"}, "socket_options must be a sequence"),
        ({"socket_options": b"\x01"}, "socket_options must be a sequence"),
        ({"socket_options": (1, 9, 1)}, r"socket_options\[0\] must be a \(level, option, value\)"),
        (
            {"socket_options": [[1, 9, 1]]},
            r"socket_options\[0\] must be a \(level, option, value\)",
        ),
        ({"socket_options": [(1, 9)]}, r"socket_options\[0\] must be a \(level, option, value\)"),
        (
            {"socket_options": [(1, 9, 1), ("1", 9, 1)]},
            r"socket_options\[1\]: level must be an int",
        ),
        ({"socket_options": [(1, 9.0, 1)]}, r"socket_options\[0\]: option must be an int"),
        ({"socket_options": [(1, 9, True)]}, r"socket_options\[0\]: value must be an int or bytes"),
        ({"socket_options": [(1, 9, 1.5)]}, r"socket_options\[0\]: value must be an int or bytes"),
        ({"socket_options": [(1, 9, "lo")]}, r"socket_options\[0\]: value must be an int or bytes"),
        ({"local_address": b"127.0.0.1"}, "local_address must be an IP address as a str or None"),
        ({"local_address": ("127.0.0.1", 0)}, "local_address must be an IP address as a str"),
    ],
)
def test_lifecycle_type_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Config(**values)
