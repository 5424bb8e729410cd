"""fakesite: a local stand-in for WhatsApp Web used by chatscale's tests; not affiliated.

It mimics the login flow (rotating QR ref, phone scan, token in localStorage + IndexedDB)
and the DOM selectors the shard's `whatsapp` driver relies on. See README.md.
"""

from fakesite.app import BANNER, create_app

__all__ = ["BANNER", "create_app"]
