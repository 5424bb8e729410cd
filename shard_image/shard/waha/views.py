"""WAHA's response shapes (SessionInfo, SessionDTO, MeInfo, WAMessage, Base64File) built from
chatscale's records. Pure."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from chatscale_contract.webhooks import Webhook, stored_hooks
from shard.waha.names import name_of

ENGINE = {"engine": {"engine": "CHATSCALE"}}


def waha_hook(hook: Webhook) -> dict[str, Any]:
    """A receiver as WAHA writes it in `config.webhooks`."""
    return {
        "url": hook.url,
        "events": list(hook.events),
        "hmac": {"key": hook.hmac.key} if hook.hmac else None,
        "retries": {
            "policy": hook.retries.policy,
            "delaySeconds": hook.retries.delay_seconds,
            "attempts": hook.retries.attempts,
        },
        "customHeaders": [{"name": h.name, "value": h.value} for h in hook.custom_headers],
    }


def config_of(record: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": json.loads(record.get("metadata") or "{}") or None,
        "webhooks": [waha_hook(h) for h in stored_hooks(record.get("webhooks", ""))],
    }


def me_view(phone: str | None) -> dict[str, Any] | None:
    """MeInfo of a logged-in account (its phone number), or None."""
    return {"id": f"{phone}@c.us", "pushName": ""} if phone else None


def session_dto(sid: str, record: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name_of(sid, record),
        "status": record.get("status", "STOPPED"),
        "config": config_of(record),
    }


def session_info(sid: str, record: dict[str, str], me: str | None = None) -> dict[str, Any]:
    updated = float(record.get("updated_at") or record.get("created_at") or 0)
    return {
        **session_dto(sid, record),
        "me": me_view(me or record.get("me") or None),
        "assignedWorker": record.get("owner") or None,
        "presence": None,
        "timestamps": {"activity": int(updated * 1000)},
        **ENGINE,
    }


def base64_file(png: bytes) -> dict[str, str]:
    return {"mimetype": "image/png", "data": base64.b64encode(png).decode()}


def sent_message(message_id: str, me: str | None, chat_id: str, text: str) -> dict[str, Any]:
    """WAMessage of a text chatscale just sent (acknowledged by the server: ack 1)."""
    return {
        "id": message_id,
        "timestamp": int(time.time()),
        "from": f"{me}@c.us" if me else None,
        "fromMe": True,
        "source": "api",
        "to": chat_id,
        "participant": None,
        "body": text,
        "hasMedia": False,
        "media": None,
        "ack": 1,
        "ackName": "SERVER",
    }
