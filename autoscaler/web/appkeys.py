"""What the status app carries: the daemon, and this instance's activator and deliverer."""

from __future__ import annotations

from aiohttp import web

from autoscaler.activator.hold import Activator
from autoscaler.loop.daemon import Daemon
from autoscaler.webhooks.deliver import Deliverer

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)
ACTIVATOR: web.AppKey[Activator] = web.AppKey("activator", Activator)
DELIVERER: web.AppKey[Deliverer] = web.AppKey("deliverer", Deliverer)
