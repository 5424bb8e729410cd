"""The canonical session id form (autoscaler/ids.py)."""

from __future__ import annotations

import pytest

from chatscale_contract.ids import InvalidSessionId, check_session_id


@pytest.mark.parametrize("good", ["a", "0", "alice", "ws-12_acc-3", "a" * 64, "default"])
def test_canonical_ids_pass(good: str) -> None:
    assert check_session_id(good) == good


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("Alice", "lowercase; use 'alice'"),
        ("abc\n", "1-64 characters"),
        ("", "non-empty"),
        (None, "non-empty"),
        (12, "non-empty"),
        ("_x", "starting with a letter or digit"),
        ("a b", "1-64 characters"),
        ("a/b", "1-64 characters"),
        ("a" * 65, "longer than 64"),
        ("é", "1-64 characters"),
    ],
)
def test_other_spellings_are_refused_with_a_reason(bad: object, message: str) -> None:
    with pytest.raises(InvalidSessionId, match=message):
        check_session_id(bad)
