"""Kubernetes quantities, parsed as the apiserver parses them (exactly, rounded up to whole bytes)."""

from decimal import Decimal

import pytest

from localattn_operator.quantity import parse_quantity, quantity_to_bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512Mi", Decimal(512 * 2**20)), ("16Gi", Decimal(16 * 2**30)), ("1Ki", Decimal(1024)),
        ("1.5G", Decimal(1_500_000_000)), ("500m", Decimal("0.5")), ("1e3", Decimal(1000)), ("2E-1", Decimal("0.2")),
        ("100", Decimal(100)), (7, Decimal(7)), ("+4k", Decimal(4000)), (".5Ki", Decimal(512)), ("-1", Decimal(-1)),
    ],
)
def test_parse(value: int | str, expected: Decimal) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("value", ["abc", "", "1.2.3", "5 Gi", "5gi", "Gi", "1Kii", "0x10", True])
def test_rejects_what_the_apiserver_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(value)  # type: ignore[arg-type]


def test_bytes_round_up() -> None:
    assert quantity_to_bytes("500m") == 1 and quantity_to_bytes("1Mi") == 1048576 and quantity_to_bytes(3) == 3
