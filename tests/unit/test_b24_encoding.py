"""PHP-style encoding of batch command strings."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest

from crmbridge.connectors.bitrix24.encoding import encode_command, encode_params, is_reference


def test_nested_filters_and_lists_are_php_style_with_operators_encoded() -> None:
    query = encode_params({"filter": {">ID": 5, "!STAGE_ID": "WON", "@ID": [1, 2]}, "select": ["ID", "TITLE"]})
    assert query == (
        "filter[%3EID]=5&filter[%21STAGE_ID]=WON&filter[%40ID][0]=1&filter[%40ID][1]=2&select[0]=ID&select[1]=TITLE"
    )


def test_values_are_url_encoded_plus_becomes_2b() -> None:
    assert encode_params({"fields": {"TITLE": "a+b & c=d/é"}}) == "fields[TITLE]=a%2Bb+%26+c%3Dd%2F%C3%A9"
    # What PHP's parse_str would read back
    assert dict(parse_qsl("TITLE=a%2Bb+%26+c%3Dd%2F%C3%A9")) == {"TITLE": "a+b & c=d/é"}


def test_booleans_are_never_python_words() -> None:
    query = encode_params({"filter": {"ACTIVE": True, "CLOSED": False}, "flag": "Y"})
    assert query == "filter[ACTIVE]=1&filter[CLOSED]=0&flag=Y"
    assert "True" not in query and "False" not in query


def test_result_references_stay_literal() -> None:
    query = encode_params(
        {
            "filter": {">ID": "$result[p0][49][ID]"},
            "ID": "$result[get_user][UF_DEPARTMENT][0]",
            "tasks": "$result[p0][tasks][49][id]",
        }
    )
    assert query == (
        "filter[%3EID]=$result[p0][49][ID]&ID=$result[get_user][UF_DEPARTMENT][0]&tasks=$result[p0][tasks][49][id]"
    )
    assert "%24" not in query and "%5B" not in query


def test_reference_inside_text_keeps_only_the_reference_literal() -> None:
    assert encode_params({"COMMENT": "id $result[a][ID] done"}) == "COMMENT=id+$result[a][ID]+done"


def test_scalars_none_empty_containers_and_types() -> None:
    query = encode_params(
        {
            "n": None,
            "empty": [],
            "f": 1.5,
            "d": Decimal("19999.99"),
            "day": dt.date(2025, 1, 31),
            "ts": dt.datetime(2025, 1, 31, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=3))),
        }
    )
    assert query == "n=&empty[]=&f=1.5&d=19999.99&day=2025-01-31&ts=2025-01-31T10%3A00%3A00%2B03%3A00"


def test_unencodable_values_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_params({"x": object()})
    with pytest.raises(ValueError):
        encode_params({"x": float("nan")})


def test_command_strings() -> None:
    assert encode_command("user.current") == "user.current?"
    assert encode_command("crm.deal.get", {"id": 7}) == "crm.deal.get?id=7"


def test_is_reference() -> None:
    assert is_reference("$result[p0][49][ID]")
    assert is_reference("$result_next[x]")
    assert not is_reference("$result")
    assert not is_reference("x $result[a]")
    assert not is_reference(5)
