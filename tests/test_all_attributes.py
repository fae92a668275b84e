"""The public surface: every name in ``conpool.__all__`` exists, is documented,
says it lives in ``conpool``, and API.md's names are all there."""

from __future__ import annotations

import inspect

import pytest

import conpool

# The names ../shared/API.md promises (the contract: never rename or remove).
CONTRACT = {
    "Endpoint",
    "TLS",
    "Config",
    "Pool",
    "Connection",
    "PoolError",
    "ConnectError",
    "ResolveError",
    "PoolTimeout",
    "PoolClosed",
    "Resolver",
    "ResolvedAddress",
    "SystemResolver",
    "DNSResolver",
    "StaticResolver",
    "Tracer",
    "Event",
    "EndpointStats",
    "AddressStats",
}


def test_the_contract_is_exported() -> None:
    assert CONTRACT <= set(conpool.__all__)


def test_all_is_sorted_tuple_without_duplicates() -> None:
    assert isinstance(conpool.__all__, tuple)
    assert len(set(conpool.__all__)) == len(conpool.__all__)


@pytest.mark.parametrize("name", conpool.__all__)
def test_every_public_name_exists_and_is_documented(name: str) -> None:
    obj = getattr(conpool, name)
    if name == "__version__":
        assert isinstance(obj, str) and obj
        return
    if name == "POLICIES":
        assert set(obj) == {"least-connections", "round-robin", "power-of-two"}
        return
    if name == "Hook":  # a type alias
        return
    assert inspect.getdoc(obj), f"conpool.{name} has no docstring"
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert obj.__module__ == "conpool", f"conpool.{name}.__module__ is {obj.__module__!r}"


@pytest.mark.parametrize(
    "cls", [conpool.Pool, conpool.Config, conpool.Endpoint, conpool.TLS, conpool.Tracer]
)
def test_public_methods_are_documented(cls: type) -> None:
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
            continue
        assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"


def test_error_tree() -> None:
    assert issubclass(conpool.ConnectError, conpool.PoolError)
    assert issubclass(conpool.ConnectError, OSError)
    assert issubclass(conpool.ResolveError, conpool.ConnectError)
    assert issubclass(conpool.PoolTimeout, conpool.PoolError)
    assert issubclass(conpool.PoolTimeout, TimeoutError)
    assert issubclass(conpool.PoolClosed, conpool.PoolError)
