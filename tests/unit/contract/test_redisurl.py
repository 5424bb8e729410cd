"""Where Redis is: plain URLs pass through, Sentinel URLs are read; mistakes are named. Pure."""

from __future__ import annotations

import pytest

from chatscale_contract.config import Config
from chatscale_contract.redisurl import RedisTarget, parse_redis_url


def test_plain_urls_pass_through() -> None:
    assert parse_redis_url("redis://redis:6379/0") == RedisTarget(url="redis://redis:6379/0")
    assert not parse_redis_url("rediss://h:6380/1").sentinel


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    target = parse_redis_url("redis+sentinel://:s3cret@s1:26379,s2,s3:26380/chatscale/2")
    assert target.sentinels == (("s1", 26379), ("s2", 26379), ("s3", 26380))
    assert (target.service, target.db, target.password, target.username) == (
        "chatscale",
        2,
        "s3cret",
        None,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://redis:6379", "use redis://"),
        ("redis+sentinel:///chatscale", "at least one sentinel"),
        ("redis+sentinel://s1:26379", "the path is /<service name>"),
        ("redis+sentinel://s1/chatscale/zero", "the database is a number"),
        ("redis+sentinel://s1:port/chatscale", "the port is a number"),
    ],
)
def test_mistakes_are_named(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)
    with pytest.raises(ValueError, match=message):
        Config.model_validate({"redis": {"url": url}})
