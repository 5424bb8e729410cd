"""The listing query: parameters read, checked and named when wrong; filters applied."""

from __future__ import annotations

import pytest
from shard.catalog import BadQuery, Query, query_from


def test_defaults_list_the_first_hundred_of_everything() -> None:
    assert query_from({}) == Query(frozenset(), None, None, 100, 0)


def test_every_parameter_is_read() -> None:
    params = {
        "status": "WORKING,FAILED",
        "workspace_id": "w1",
        "account_id": "",
        "limit": "1000",
        "offset": "40",
    }
    query = query_from(params)
    assert query == Query(frozenset({"WORKING", "FAILED"}), "w1", "", 1000, 40)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "working"}, "status: unknown working; one or more of FAILED, SCAN_QR_CODE"),
        ({"limit": "1001"}, "limit must be a whole number from 1 to 1000, not '1001'"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000, not 'ten'"),
        ({"offset": "1.5"}, "offset must be a whole number 0 or more, not '1.5'"),
        ({"sort": "id"}, "unknown query parameter(s): sort (account_id, limit, offset"),
    ],
)
def test_wrong_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadQuery) as caught:
        query_from(params)
    assert message in str(caught.value)


def test_filters_combine() -> None:
    query = Query(statuses=frozenset({"WORKING"}), workspace_id="w1")
    assert query.matches({"status": "WORKING", "workspace_id": "w1"})
    assert not query.matches({"status": "WORKING", "workspace_id": "w2"})
    assert not query.matches({"status": "FAILED", "workspace_id": "w1"})
    assert not query.matches({"workspace_id": "w1"}), "a record without status is STOPPED"
    assert Query(account_id="").matches({}), "an empty reference matches a record without one"
