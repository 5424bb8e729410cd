"""Heavy mode of the stand-in for WhatsApp Web (fakesite; not affiliated).

A page in heavy mode weighs about what WhatsApp Web weighs, so that memory per session, restore
time and snapshot size are measured on something close to the real thing:

- `bundle.<hash>.js`: several MB of generated JavaScript (`bundle_source()`), deterministic and
  cached. It is real code: about 1,400 modules for 5 MB in a small module system, each with its
  string table, config object, functions and a class. At startup every module runs, builds its
  objects and calls its functions, as an app bundle does.
- `heavy.<hash>.js` (heavy.js next to this file): the page logic. A service worker, a large DOM,
  several MB in IndexedDB once per login, and a timer; see the comment at its top.
- `/serviceworker.js`: caches both scripts, as WhatsApp Web's service worker caches its bundles.

Both scripts are served under content-hashed names with `immutable` cache headers, like a real
app's bundle. Heavy mode is chosen per site (`create_app(heavy=HeavyOptions(default=True))`,
`--heavy`, FAKESITE_HEAVY=1) and per page (`?heavy=1` / `?heavy=0`, remembered in a cookie).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

MARKER = "<!--fakesite:heavy-->"
"""Where page.html takes the heavy scripts; a light page keeps the comment."""
COOKIE = "fakesite_heavy"
"""Remembers a page's `?heavy=1` or `?heavy=0` for the browser context's next loads."""
WORKER_PATH = "/serviceworker.js"
ASSET_PREFIX = "/heavy/"
IMMUTABLE = "public, max-age=31536000, immutable"
HEAVY_JS = Path(__file__).with_name("heavy.js").read_text(encoding="utf-8")
HEADER = "/* Stand-in for WhatsApp Web used by chatscale's tests; not affiliated. */\n"
_CHOICES = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}


@dataclass(frozen=True)
class HeavyOptions:
    """A site's heavy mode: whether its pages are heavy by default, and how heavy."""

    default: bool = False
    """Every page is heavy unless it asks for `?heavy=0` (otherwise only pages that ask)."""
    script_mb: float = 5.0
    """Size of the generated bundle."""
    idb_mb: float = 5.0
    """What a heavy page writes into IndexedDB after the login (once per login)."""
    tick_seconds: float = 3.0
    """How often a logged-in heavy page updates its clock, presence and IndexedDB."""

    def __post_init__(self) -> None:
        if not 0 < self.script_mb <= 64:
            raise ValueError("script_mb must be more than 0 and at most 64")
        if not 0 <= self.idb_mb <= 1024:
            raise ValueError("idb_mb must be from 0 to 1024")
        if self.tick_seconds <= 0:
            raise ValueError("tick_seconds must be positive")


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    etag: str

    @property
    def url(self) -> str:
        return ASSET_PREFIX + self.name

    @classmethod
    def of(cls, stem: str, text: str) -> Asset:
        body = text.encode()
        digest = hashlib.sha256(body).hexdigest()
        return cls(f"{stem}.{digest[:12]}.js", body, f'"{digest[:32]}"')


@dataclass(frozen=True)
class Assets:
    bundle: Asset
    script: Asset
    worker: bytes

    def get(self, name: str) -> Asset | None:
        return next((a for a in (self.bundle, self.script) if a.name == name), None)


@functools.lru_cache(maxsize=4)
def assets(script_mb: float) -> Assets:
    """The heavy scripts for a bundle of `script_mb` MB (built once per size, then cached)."""
    bundle = Asset.of("bundle", bundle_source(int(script_mb * 2**20)))
    script = Asset.of("heavy", HEADER + HEAVY_JS)
    return Assets(bundle, script, service_worker([bundle.url, script.url]).encode())


async def assets_async(script_mb: float) -> Assets:
    """`assets()`, built off the event loop the first time (a 5 MB bundle takes ~1 s)."""
    return await asyncio.to_thread(assets, script_mb)


def wanted(request: web.Request, options: HeavyOptions) -> tuple[bool, str | None]:
    """Whether this page is heavy, and the choice to remember in the cookie (from ?heavy=)."""
    asked = _CHOICES.get(request.query.get("heavy", "").lower())
    if asked is not None:
        return asked, "1" if asked else "0"
    remembered = _CHOICES.get(request.cookies.get(COOKIE, ""))
    return (options.default if remembered is None else remembered), None


async def render(page: str, request: web.Request, options: HeavyOptions) -> web.Response:
    """The page, with the heavy scripts in heavy mode."""
    heavy, remember = wanted(request, options)
    if heavy:
        built = await assets_async(options.script_mb)
        config = {
            "idbMb": options.idb_mb,
            "tickMs": round(options.tick_seconds * 1000),
            "worker": WORKER_PATH,
            "bundle": built.bundle.url,
        }
        tags = (
            f"<script>window.FAKESITE_HEAVY = {json.dumps(config)};</script>\n"
            f'<script src="{built.bundle.url}"></script>\n'
            f'<script src="{built.script.url}"></script>'
        )
        page = page.replace(MARKER, tags)
    response = web.Response(text=page, content_type="text/html")
    if remember is not None:
        response.set_cookie(COOKIE, remember, path="/", samesite="Lax")
    return response


async def serve_asset(request: web.Request, script_mb: float) -> web.Response:
    """GET /heavy/<name>: a content-hashed script, cacheable for a year."""
    asset = (await assets_async(script_mb)).get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    headers = {"Cache-Control": IMMUTABLE, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type="application/javascript", headers=headers)


async def serve_worker(request: web.Request, script_mb: float) -> web.Response:
    """GET /serviceworker.js: always revalidated, as browsers expect of a worker script."""
    body = (await assets_async(script_mb)).worker
    return web.Response(
        body=body, content_type="application/javascript", headers={"Cache-Control": "no-cache"}
    )


def service_worker(precache: list[str]) -> str:
    """Caches the heavy scripts at install and serves them from the cache; everything else
    (the page, the API) goes to the network untouched."""
    cache = "fakesite-heavy-" + hashlib.sha256(" ".join(precache).encode()).hexdigest()[:12]
    return (
        HEADER
        + f"const CACHE = {json.dumps(cache)};\nconst PRECACHE = {json.dumps(precache)};\n"
        + """
self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(PRECACHE))
    .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  const old = (name) => name.startsWith("fakesite-heavy-") && name !== CACHE;
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter(old).map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (!url.pathname.startsWith("/heavy/")) return;
  event.respondWith(caches.open(CACHE).then(async (cache) => {
    const hit = await cache.match(event.request);
    if (hit) return hit;
    const response = await fetch(event.request);
    if (response.ok) await cache.put(event.request, response.clone());
    return response;
  }));
});
"""
    )


# ---- the generated bundle -----------------------------------------------------------------

_WORDS = """account ack archive audio avatar block broadcast business call caption catalog chat
collection community contact cursor delivery device disappearing document download
draft emoji encrypt ephemeral event forward gallery group history identity image
invite keyboard label link location media member mention message mute newsletter
notification order participant payment pin poll presence privacy product profile
quoted reaction read receipt recording reply report search sender session settings
sharing signal star status sticker storage subscription sync thumbnail typing unread
upload usync verified video view voice wallpaper web"""
WORDS = _WORDS.split()

LOADER_HEAD = """(function (global) {
"use strict";
// A small module system, as app bundles have: __d defines, require runs a factory once.
const factories = new Map();
const modules = new Map();
function __d(name, deps, factory) { factories.set(name, { deps, factory }); }
function require(name) {
  const loaded = modules.get(name);
  if (loaded) return loaded.exports;
  const def = factories.get(name);
  if (!def) throw new Error("fakesite bundle: no module " + name);
  const module = { id: name, exports: {} };
  modules.set(name, module);
  def.factory(module, module.exports, require, def.deps.map(require));
  return module.exports;
}
"""

LOADER_TAIL = """
// Startup: every module runs (building its objects) and is exercised once.
const started = performance.now();
let checksum = 0;
for (const name of factories.keys()) checksum = (checksum + require(name).run(name.length)) >>> 0;
global.__fakesiteBundle = {
  modules: modules.size, checksum, startupMs: performance.now() - started, require,
};
})(self);
"""


@functools.lru_cache(maxsize=4)
def bundle_source(size: int) -> str:
    """At least `size` bytes of JavaScript; the same text for the same size."""
    rng = random.Random(f"fakesite-bundle-{size}")
    parts = [HEADER, LOADER_HEAD]
    total = sum(len(p) for p in parts) + len(LOADER_TAIL)
    names: list[str] = []
    while total < size:
        module = _module(rng, names)
        parts.append(module)
        total += len(module)
    parts.append(LOADER_TAIL)
    return "".join(parts)


def _camel(rng: random.Random, count: int) -> str:
    return "".join(w.capitalize() for w in rng.sample(WORDS, count))


def _phrase(rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
    return text.capitalize() + rng.choice([".", "", "?", "…", " {count}", " ({name})"])


def _module(rng: random.Random, names: list[str]) -> str:
    """One module; it may depend on modules defined before it (`names`, then appended to)."""
    name = f"WAWeb{_camel(rng, rng.randint(2, 3))}{len(names)}"
    deps = sorted({rng.choice(names) for _ in range(rng.randint(0, 3))} if names else set())
    names.append(name)
    strings = [_phrase(rng) for _ in range(rng.randint(8, 16))]
    table: dict[str, object] = {
        f"{rng.choice(WORDS)}{k}": rng.randrange(1, 100_000) for k in range(rng.randint(4, 10))
    }
    table["kind"] = rng.choice(WORDS)
    table["flags"] = [rng.randrange(2) == 1 for _ in range(rng.randint(2, 6))]
    table["limits"] = {w: rng.randrange(1, 5000) for w in rng.sample(WORDS, 3)}
    numeric = [k for k, v in table.items() if isinstance(v, int) and not isinstance(v, bool)]
    functions = [f"{rng.choice(WORDS)}{_camel(rng, 1)}{k}" for k in range(rng.randint(3, 6))]
    bodies = [
        _function(rng, fn, functions[:k], numeric, len(strings)) for k, fn in enumerate(functions)
    ]
    unused = [_function(rng, f"unused{k}", functions, numeric, len(strings)) for k in range(2)]
    cls = _camel(rng, 2) + "Model"
    method = rng.choice(functions)
    run_calls = " ^ ".join(
        f"{fn}(STRINGS[(b + {k}) % STRINGS.length], b + {rng.randrange(1000)})"
        for k, fn in enumerate(functions)
    )
    body = f"""
__d({json.dumps(name)}, {json.dumps(deps)}, function (module, exports, require, deps) {{
  "use strict";
  const STRINGS = {json.dumps(strings, ensure_ascii=False)};
  const TABLE = {json.dumps(table)};
{"".join(bodies)}{"".join(unused)}
  class {cls} {{
    constructor(id, rank) {{
      this.id = id;
      this.rank = rank;
      this.label = STRINGS[rank % STRINGS.length];
      this.seen = new Set();
    }}
    touch(b) {{ this.seen.add(b); return {method}(this.label, b + this.rank); }}
    weight() {{ return this.id.length * {rng.randrange(2, 97)} + this.seen.size; }}
    compare(other) {{ return other && other.rank > this.rank ? other.rank - this.rank : 0; }}
    toJSON() {{ return {{ id: this.id, rank: this.rank, label: this.label }}; }}
  }}
  const items = [];
  for (let i = 0; i < {rng.randint(8, 40)}; i++) {{
    const rank = (i * {rng.randrange(3, 997)}) % 1009;
    items.push(new {cls}({json.dumps(name.lower() + ":")} + i, rank));
  }}
  module.exports = {{
    name: {json.dumps(name)},
    table: TABLE,
    items,
    leaf: {functions[0]},
    unused: [unused0, unused1],
    run(b) {{
      const out = ({run_calls}) ^ items[b % items.length].touch(b);
      return (out + items[0].weight() + items[0].compare(items[items.length - 1])) >>> 0;
    }},
  }};
}});
"""
    return body


def _function(rng: random.Random, fn: str, earlier: list[str], numeric: list[str], n: int) -> str:
    """One function `fn(a: string, b: number) -> number` from a few shapes; it may call the
    functions defined before it (`earlier`) or a dependency's `leaf`, never itself."""
    c = rng.randrange(1, 1 << 24)
    key = f"TABLE.{rng.choice(numeric)}"
    mod = rng.randrange(1000, 1 << 20)
    shape = rng.randrange(5) if earlier else rng.randrange(3)
    if shape == 0:
        prime = rng.choice([16777619, 2654435761, 40503, 69069])
        body = f"""let h = {c} ^ b;
    for (let i = 0; i < a.length; i++) h = Math.imul(h ^ a.charCodeAt(i), {prime}) >>> 0;
    return h % {mod};"""
    elif shape == 1:
        terms = ["a.length", "b", key, f"STRINGS[{rng.randrange(n)}].length"]
        cases = "".join(
            f"\n      case {k}: return {rng.choice(terms)} * {rng.randrange(1, 999)} + {k};"
            for k in range(rng.randint(3, 7))
        )
        body = f"""switch ((b >>> 0) % {rng.randint(4, 9)}) {{{cases}
      default: return {c} % ({key} + 1);
    }}"""
    elif shape == 2:
        body = f"""const parts = (a + " " + STRINGS[(b >>> 0) % STRINGS.length]).split(" ");
    let acc = {c};
    for (const part of parts) acc = (acc * {rng.randrange(3, 131)} + part.length) % {mod};
    return acc;"""
    elif shape == 3:
        start, bit = rng.randrange(n), 1 << rng.randrange(8)
        tags = f"STRINGS.slice({start}, {start + rng.randint(1, 4)})"
        call = f"{rng.choice(earlier)}(a, b + 1)"
        body = f"""const record = {{ id: a + ":" + b, rank: (b * {rng.randrange(3, 9973)}) % 65521,
      tags: {tags}, flag: (b & {bit}) !== 0 }};
    return record.rank + record.tags.length + (record.flag ? {call} : {key});"""
    else:
        body = f"""const dep = deps[(b >>> 0) % (deps.length || 1)];
    return (dep ? dep.leaf(a, b) : {rng.choice(earlier)}(a, b)) ^ {c};"""
    return f"""  function {fn}(a, b) {{
    {body}
  }}
"""
