"""Listening on a Redis pub/sub channel for as long as a process lives (nudges, front configs).

A quiet channel is normal, so the connection has no read timeout (a client with one, like the
daemon's, drops its subscription every few idle seconds and misses what is published while it
resubscribes). Instead it pings Redis every `HEALTH_CHECK` seconds, so a connection that died
is noticed, and the subscription is made again after a short pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from autoscaler.redisconn import connect

log = logging.getLogger(__name__)
HEALTH_CHECK = 10.0
RESUBSCRIBE_AFTER = 2.0


async def listen(url: str, channel: str, on_message: Callable[[str], None]) -> None:
    """Call `on_message` with the data of every message on `channel`, until cancelled."""
    while True:
        client = connect(url, socket_connect_timeout=5, health_check_interval=HEALTH_CHECK)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=HEALTH_CHECK
                    )
                    if message is not None:
                        on_message(str(message.get("data", "")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # this listener must outlive any single failure
            log.warning(
                "channel %s lost (%s); subscribing again in %g s", channel, exc, RESUBSCRIBE_AFTER
            )
            await asyncio.sleep(RESUBSCRIBE_AFTER)
        finally:
            await client.aclose()
