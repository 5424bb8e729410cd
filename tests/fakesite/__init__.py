"""fakesite: a local stand-in for WhatsApp Web used by chatscale's tests; not affiliated.

It mimics the login flow (rotating QR ref, phone scan, token in localStorage + IndexedDB)
and the DOM selectors the shard's `whatsapp` driver relies on. Heavy mode (heavy.py) makes a page
weigh like WhatsApp Web. See README.md.
"""

from fakesite.app import BANNER, create_app
from fakesite.heavy import HeavyOptions

__all__ = ["BANNER", "HeavyOptions", "create_app"]
