"""Session drivers: what a site looks like to the shard (where the QR is, what "logged in" means).

Selectors live here and only here, because sites change them; each is overridable per shard
(WHATSAPP_SELECTORS) and per session (`options.selectors`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from shard.messages import observer_script


class DriverError(Exception):
    """The site did not behave as the driver expects; the message is shown to the caller."""


class Unsupported(DriverError):
    """The driver cannot do this (e.g. send messages on a generic page)."""


class PageState(StrEnum):
    LOADING = "loading"
    QR = "qr"
    READY = "ready"


@dataclass(frozen=True)
class Selectors:
    qr: str = "div[data-ref]"
    """Element carrying the QR payload (and the element screenshotted for the PNG)."""
    qr_attribute: str = "data-ref"
    """Attribute of `qr` holding the QR string; empty: use the element's text."""
    ready: str = "#pane-side"
    """Present only once logged in (WhatsApp Web's chat list)."""
    compose: str = 'footer div[contenteditable="true"][data-tab="10"]'
    """The message box of an open chat; pressing Enter in it sends."""
    message: str = "#main [data-id]"
    """Message bubbles of the open chat; a sent one's data-id is returned as the message id."""
    observed: str = "[data-id]"
    """Every message element the page renders (chat-list previews, bubbles), watched for
    message events: data-id is WhatsApp's `<fromMe>_<chat>_<id>`."""
    message_text: str = ".selectable-text"
    """The text of a message, inside its element."""
    ack: str = "[data-icon]"
    """A sent message's ack icon, inside its element: aria-label Sent, Delivered or Read."""

    def merged(self, overrides: Mapping[str, str]) -> Selectors:
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise DriverError(f"unknown selector(s): {', '.join(sorted(unknown))}")
        return replace(self, **dict(overrides))


WHATSAPP = "whatsapp"
WEB = "web"
DEFAULT_DRIVER = WHATSAPP
"""The driver of a session that names none."""
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
MAX_TEXT = 4096
_LAST_WID = "() => localStorage.getItem('last-wid-md') || localStorage.getItem('last-wid')"


class Driver(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...

    async def open(self, page: Page) -> None: ...
    async def state(self, page: Page) -> PageState: ...
    async def qr(self, page: Page, image: bool = True) -> tuple[str, bytes]: ...
    async def send_text(self, page: Page, to: str, text: str) -> str: ...
    async def logout(self, page: Page) -> None: ...
    async def me(self, page: Page) -> str | None: ...
    async def watch(self, page: Page, report: Callable[[Any], Awaitable[None]]) -> None: ...


@dataclass(frozen=True)
class WebDriver:
    """A generic login page: `url`, `qr_selector`, `ready_selector` given per session."""

    url: str
    selectors: Selectors
    name: str = WEB

    async def open(self, page: Page) -> None:
        await page.goto(self.url, wait_until="domcontentloaded")

    async def state(self, page: Page) -> PageState:
        if await page.locator(self.selectors.ready).count():
            return PageState.READY
        if await page.locator(self.selectors.qr).count():
            return PageState.QR
        return PageState.LOADING

    async def qr(self, page: Page, image: bool = True) -> tuple[str, bytes]:
        """The QR payload, and a PNG of the QR element when `image` (b"" otherwise)."""
        element = page.locator(self.selectors.qr).first
        if not await element.count():
            raise DriverError("no QR code on the page (already logged in, or still loading)")
        attribute = self.selectors.qr_attribute
        raw = await element.get_attribute(attribute) if attribute else await element.inner_text()
        png = await element.screenshot(type="png") if image else b""
        return raw or "", png

    async def send_text(self, page: Page, to: str, text: str) -> str:
        raise Unsupported(f"the {self.name} driver cannot send messages")

    async def logout(self, page: Page) -> None:
        """A generic page has no known logout; forgetting the session drops its storage."""

    async def me(self, page: Page) -> str | None:
        """The logged-in account's phone number; a generic page does not say."""
        return None

    async def watch(self, page: Page, report: Callable[[Any], Awaitable[None]]) -> None:
        """Report messages the page shows to `report`; a generic page has none."""


@dataclass(frozen=True)
class WhatsAppDriver(WebDriver):
    """WhatsApp Web: QR in `div[data-ref]`, logged in once the chat list shows, send by URL."""

    name: str = WHATSAPP

    async def send_text(self, page: Page, to: str, text: str) -> str:
        if not _PHONE.fullmatch(to):
            raise DriverError("`to` must be a phone number: 5-20 digits, optional leading +")
        if await self.state(page) != PageState.READY:
            raise DriverError("session is not logged in")
        target = f"{self.url}/send?phone={quote(to.lstrip('+'))}&text={quote(text)}"
        try:
            await page.goto(target, wait_until="domcontentloaded")
            compose = page.locator(self.selectors.compose)
            await compose.wait_for(timeout=30_000)
            # Counted in the chat just opened, which may already show earlier messages.
            before = await page.locator(self.selectors.message).count()
            await compose.press("Enter")
            bubble = page.locator(self.selectors.message).nth(before)
            await bubble.wait_for(timeout=30_000)
        except PlaywrightTimeout as exc:
            raise DriverError("the message was not sent (compose box or bubble missing)") from exc
        return await bubble.get_attribute("data-id") or ""

    async def logout(self, page: Page) -> None:
        await page.goto(f"{self.url}/logout", wait_until="domcontentloaded")

    async def watch(self, page: Page, report: Callable[[Any], Awaitable[None]]) -> None:
        """Before the first navigation: observer.js in every document of the page, reporting
        message elements (`observed`) to `report` as they appear or change."""
        await page.expose_function("__chatscale_messages", report)
        await page.add_init_script(observer_script(asdict(self.selectors)))

    async def me(self, page: Page) -> str | None:
        """WhatsApp Web keeps the account's id in localStorage (`last-wid-md`, a JSON string
        such as "15550001234:12@c.us"); its phone number is the part before ':' or '@'."""
        raw = await page.evaluate(_LAST_WID)
        match = re.match(r'^"?\+?([0-9]{5,20})[:@]', raw) if isinstance(raw, str) else None
        return match.group(1) if match else None


def make_driver(
    name: str, options: Mapping[str, Any], whatsapp_url: str, defaults: Mapping[str, str]
) -> Driver:
    """Build the driver a session asked for; raises DriverError on bad options."""
    overrides = options.get("selectors") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        raise DriverError("options.selectors must be an object of strings")
    selectors = Selectors().merged(defaults).merged(overrides)
    if name == WHATSAPP:
        url = _url(options.get("url") or whatsapp_url)
        return WhatsAppDriver(url=url, selectors=selectors)
    if name == WEB:
        for key in ("url", "qr_selector", "ready_selector"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise DriverError(f"the web driver needs options.{key}")
        web = selectors.merged({"qr": options["qr_selector"], "ready": options["ready_selector"]})
        if isinstance(options.get("qr_attribute"), str):
            web = web.merged({"qr_attribute": options["qr_attribute"]})
        return WebDriver(url=_url(options["url"]), selectors=web)
    raise DriverError(f"unknown driver {name!r}; use {WHATSAPP!r} or {WEB!r}")


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise DriverError("url must be a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DriverError(f"url must be http(s)://host[...], got {value!r}")
    return value.rstrip("/")
