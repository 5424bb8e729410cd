// Heavy mode of the stand-in for WhatsApp Web (fakesite; not affiliated). The server adds this
// script (after the generated bundle, before the page's own script) only to heavy pages; it
// adds what makes WhatsApp Web heavy and leaves the login flow and the DOM contract alone:
// - at load: registers the service worker (/serviceworker.js), which caches the bundle;
// - once logged in: a large DOM in #heavy-shell, below the app (a chat list of CHATS chats with
//   SVG avatars, a pane of MESSAGES messages, some with data-URI thumbnails). Nothing in it has a
//   data-id, so the shard's message observer reports none of it;
// - once logged in, once per login: about idbMb MB in IndexedDB, in databases "model-storage"
//   (messages, chats, contacts: plain objects, thumbnails as ArrayBuffer) and "signal-storage"
//   (keys and sessions as Uint8Array/ArrayBuffer). The auth token stays where the page keeps it.
//   Then chats, contacts and messages are loaded into in-memory models, as WhatsApp Web does;
// - every tickMs while logged in: the clock, a presence and a typing indicator, and one small
//   IndexedDB write.
// The page calls fakesiteHeavy.loggedIn(session) once logged in and awaits fakesiteHeavy.clear()
// when it forgets the login. #heavy-shell's data-idb says "seeding", then "seeded" (written
// now) or "present" (already there for this login) once the data is also loaded into the
// models; data-worker says "active" once the service worker is. window.fakesiteHeavy.status
// has the same and more (nodes, idbBytes, seedMs, models, ticks).
"use strict";
(() => {
  const CONFIG = window.FAKESITE_HEAVY || { idbMb: 5, tickMs: 3000, worker: "/serviceworker.js" };
  const CHATS = 300;
  const MESSAGES = 400;
  const BATCH_BYTES = 1 << 20;  // IndexedDB writes go in transactions of about this much
  const MODEL = { name: "model-storage", stores: { message: "id", chat: "id", contact: "id",
                                                   presence: "id", meta: "key" } };
  const SIGNAL = { name: "signal-storage", stores: { "identity-store": "address",
    "session-store": "address", "prekey-store": "keyId", "sender-key-store": "id" } };
  const WORDS = ("ok see you tomorrow then let me check the photo from yesterday did you get " +
    "my voice note call me when you are free sounds good on my way just landed running late " +
    "happy birthday thanks so much the meeting moved to three where are we meeting tonight " +
    "can you send the document lol great idea I will bring the cake sure no problem").split(" ");
  const status = { worker: "none", nodes: 0, idb: "none", idbBytes: 0, seededNow: false, seedMs: 0,
                   models: 0, ticks: 0 };
  let shell = null;
  let models = null;  // the in-memory collections, as WhatsApp Web keeps them
  let modelDb = null;
  let timer = null;

  // ---- deterministic content -------------------------------------------------------------
  function hash(text) {
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
    return h >>> 0;
  }

  function rng(seed) {
    let state = seed || 1;
    return () => {
      state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
      return state >>> 0;
    };
  }

  function pick(next, list) { return list[next() % list.length]; }
  function sentence(next, min, max) {
    const words = [];
    for (let n = min + next() % (max - min + 1); n > 0; n--) words.push(pick(next, WORDS));
    return words.join(" ");
  }
  function bytes(next, length) {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i += 4) {
      const v = next();
      out[i] = v; out[i + 1] = v >>> 8; out[i + 2] = v >>> 16; out[i + 3] = v >>> 24;
    }
    return out;
  }
  const jid = (n) => "4917" + String(10000000 + n * 7919).padStart(8, "0") + "@c.us";
  const NAMES = ["Anna", "Ben", "Carla", "Deniz", "Emil", "Fatma", "Georg", "Hana", "Ivan",
    "Jule", "Kemal", "Lena", "Mia", "Noah", "Olga", "Paul", "Rosa", "Sven", "Tara", "Umut", "Vera",
    "Yusuf"];
  const chatName = (n) => NAMES[n % NAMES.length] + " " + NAMES[(n * 7 + 3) % NAMES.length][0] +
    (n >= NAMES.length ? " " + n : "");
  const clock = (t) => new Date(t).toTimeString().slice(0, 5);

  // ---- service worker ----------------------------------------------------------------------
  function registerWorker() {
    if (!("serviceWorker" in navigator)) {  // only secure origins (https, localhost) have one
      status.worker = "unavailable";
      return;
    }
    status.worker = "registering";
    navigator.serviceWorker.register(CONFIG.worker)
      .catch((e) => { status.worker = "failed: " + e; mark(); });
    navigator.serviceWorker.ready.then(() => { status.worker = "active"; mark(); });
  }

  // ---- the large DOM -----------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    node.append(...children);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children);
    return node;
  }

  function avatar(n, name) {
    const hue = (n * 47) % 360;
    return svg("svg", { class: "heavy-avatar", viewBox: "0 0 40 40", width: 40, height: 40 },
      svg("circle", { cx: 20, cy: 20, r: 20, fill: `hsl(${hue} 45% 55%)` }),
      svg("path", { d: `M8 ${30 + n % 5} Q20 ${18 + n % 7} 32 ${30 + n % 5}`,
                    fill: `hsl(${hue} 45% 40%)` }),
      svg("text", { x: 20, y: 25, "text-anchor": "middle", fill: "#fff" },
        name.split(" ").map((w) => w[0]).join("")));
  }

  function thumbnail(next, n) {
    const hue = next() % 360;
    const image = `<svg xmlns="${SVG}" width="120" height="80"><rect width="120" height="80" ` +
      `fill="hsl(${hue} 50% 70%)"/><circle cx="${next() % 120}" cy="${next() % 80}" r="18" ` +
      `fill="hsl(${(hue + 180) % 360} 50% 50%)"/><text x="6" y="74">IMG-${n}</text></svg>`;
    return el("img", { class: "heavy-thumb", alt: "", width: 120, height: 80,
                       src: "data:image/svg+xml;base64," + btoa(image) });
  }

  function chatRow(next, n, now) {
    const name = chatName(n);
    const unread = next() % 4 === 0 ? String(1 + next() % 30) : "";
    return el("div", { class: "heavy-chat", role: "listitem", "data-heavy-chat": jid(n) },
      avatar(n, name),
      el("div", { class: "heavy-chat-body" },
        el("div", { class: "heavy-chat-top" },
          el("span", { class: "heavy-chat-name", title: name }, name),
          el("span", { class: "heavy-chat-time" }, clock(now - n * 3_600_000 / 7))),
        el("div", { class: "heavy-chat-bottom" },
          el("span", { class: "heavy-chat-status", "data-preview": "" }, sentence(next, 3, 12)),
          el("span", { class: unread ? "heavy-unread" : "heavy-read" }, unread))));
  }

  function messageRow(next, n, now) {
    const out = next() % 2 === 0;
    const node = el("div", { class: out ? "heavy-msg heavy-out" : "heavy-msg heavy-in",
                             "data-heavy-msg": "heavy-" + n },
      out ? "" : el("span", { class: "heavy-author" }, chatName(n % 17)),
      el("span", { class: "heavy-text" }, sentence(next, 2, 40)));
    if (n % 8 === 0) node.append(thumbnail(next, n));
    node.append(el("div", { class: "heavy-meta" },
      el("span", { class: "heavy-time" }, clock(now - (MESSAGES - n) * 60_000)),
      out ? el("span", { class: "heavy-tick" }, "\u2713\u2713") : ""));
    return node;
  }

  function buildShell(phone) {
    const next = rng(hash("dom:" + phone));
    const now = Date.now();
    const chats = [];
    for (let n = 0; n < CHATS; n++) chats.push(chatRow(next, n, now));
    const messages = [];
    for (let n = 0; n < MESSAGES; n++) messages.push(messageRow(next, n, now));
    shell = el("div", { id: "heavy-shell", "data-idb": status.idb, "data-worker": status.worker },
      el("style", {}, STYLE),
      el("section", { id: "heavy-side" },
        el("header", {}, el("span", { id: "heavy-clock" }, clock(now)), " ",
          el("span", { id: "heavy-presence" }, "online")),
        el("div", { id: "heavy-chats", role: "list", "aria-label": "Archived chats" }, ...chats)),
      el("section", { id: "heavy-conversation" },
        el("header", {}, chatName(0), " ", el("span", { id: "heavy-typing" }, "")),
        el("div", { id: "heavy-messages", role: "log" }, ...messages)));
    document.getElementById("heavy-shell")?.remove();
    document.body.append(shell);
    status.nodes = document.getElementsByTagName("*").length;
  }

  const STYLE = `
    #heavy-shell { display: flex; height: 100vh; border-top: 4px solid #ffd54f; background: #fff; }
    #heavy-side { width: 30%; min-width: 220px; overflow-y: auto; border-right: 1px solid #ddd; }
    #heavy-conversation { flex: 1; overflow-y: auto; background: #efeae2; }
    #heavy-shell header { padding: 10px; background: #f0f2f5; position: sticky; top: 0; }
    .heavy-chat { display: flex; gap: 10px; padding: 8px; border-bottom: 1px solid #eee; }
    .heavy-chat-body { flex: 1; min-width: 0; }
    .heavy-chat-top, .heavy-chat-bottom { display: flex; justify-content: space-between; gap: 6px; }
    .heavy-chat-status { color: #667781; overflow: hidden; white-space: nowrap;
                         text-overflow: ellipsis; }
    .heavy-chat-status.typing { color: #1fa855; }
    .heavy-unread { background: #25d366; color: #fff; border-radius: 10px; padding: 0 6px; }
    .heavy-msg { margin: 4px 10px; max-width: 65%; padding: 6px 9px; border-radius: 7px; }
    .heavy-out { margin-left: auto; background: #d9fdd3; }
    .heavy-in { background: #fff; }
    .heavy-author { display: block; color: #1fa855; font-size: 12px; }
    .heavy-thumb { display: block; margin-top: 4px; }
    .heavy-meta { text-align: right; font-size: 11px; color: #667781; }`;

  function mark() {
    if (!shell) return;
    shell.setAttribute("data-idb", status.idb);
    shell.setAttribute("data-worker", status.worker);
  }

  // ---- IndexedDB ---------------------------------------------------------------------------
  function request(req) {
    return new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  async function open(spec) {
    const req = indexedDB.open(spec.name, 1);
    req.onupgradeneeded = () => {
      for (const [store, keyPath] of Object.entries(spec.stores)) {
        req.result.createObjectStore(store, { keyPath });
      }
    };
    const db = await request(req);
    db.onversionchange = () => db.close();  // let another page delete or upgrade it
    return db;
  }

  function write(db, records) {  // records: [[store, value], ...] in one transaction
    return new Promise((resolve, reject) => {
      const tx = db.transaction([...new Set(records.map(([store]) => store))], "readwrite");
      for (const [store, value] of records) tx.objectStore(store).put(value);
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async function clearStores(db) {
    await new Promise((resolve, reject) => {
      const tx = db.transaction([...db.objectStoreNames], "readwrite");
      for (const store of db.objectStoreNames) tx.objectStore(store).clear();
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
  }

  // Bytes a value holds: string characters, binary bytes, 8 per number (as the tests count).
  function sizeOf(value) {
    if (typeof value === "string") return value.length;
    if (typeof value === "number") return 8;
    if (typeof value === "boolean" || value === null || value === undefined) return 1;
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return value.byteLength;
    let total = 0;
    for (const [key, inner] of Object.entries(value)) total += key.length + sizeOf(inner);
    return total;
  }

  // One step of the seed: a message (every sixth with a thumbnail) and, every fourth step, a
  // piece of key material, as a WhatsApp Web account's stores hold them.
  function seedStep(next, k, now, me) {
    const chat = k % CHATS;
    const fromMe = next() % 2 === 0;
    const message = {
      id: `${fromMe}_${jid(chat)}_3EB0${(k * 2654435761 >>> 0).toString(16).toUpperCase()}`,
      chatId: jid(chat), from: fromMe ? me : jid(chat), t: Math.floor(now / 1000) - k * 37,
      type: k % 6 === 0 ? "image" : "chat", body: sentence(next, 10, 110), ack: 1 + next() % 3,
      isStarred: next() % 50 === 0, broadcast: false, mentionedJidList: [],
    };
    if (k % 6 === 0) message.mediaThumb = bytes(next, 3000 + next() % 3000).buffer;
    const records = [["message", message]];
    const key = [];
    switch (k % 16) {  // addresses and ids are unique per step: nothing is overwritten
      case 0:
        key.push(["session-store", { address: jid(k) + "." + (k % 4),
                                     session: bytes(next, 1500 + next() % 1500) }]);
        break;
      case 4:
        key.push(["prekey-store", { keyId: k, keyPair: { pubKey: bytes(next, 33).buffer,
                                                         privKey: bytes(next, 32).buffer } }]);
        break;
      case 8:
        key.push(["sender-key-store", { id: "group-" + k,
                                        senderKey: bytes(next, 2000 + next() % 4000) }]);
        break;
      case 12:
        key.push(["identity-store", { address: jid(k), identityKey: bytes(next, 33) }]);
        break;
      default:
    }
    return { records, key };
  }

  async function seed(session) {
    const account = "acct-" + hash(session.token).toString(16);  // not the token itself
    status.idb = "seeding";
    mark();
    modelDb = await open(MODEL);
    const meta = await request(modelDb.transaction("meta").objectStore("meta").get("seed"));
    if (meta && meta.account === account) {
      Object.assign(status, { idb: "present", idbBytes: meta.bytes, seededNow: false });
      return;
    }
    const started = performance.now();
    const signalDb = await open(SIGNAL);
    try {
      await clearStores(modelDb);
      await clearStores(signalDb);
      const next = rng(hash("idb:" + session.phone));
      const now = Date.now();
      const me = session.phone + "@c.us";
      const chats = [];
      for (let n = 0; n < CHATS; n++) {
        chats.push(["chat", { id: jid(n), name: chatName(n), t: Math.floor(now / 1000) - n * 600,
                              unreadCount: next() % 5, archive: false, muteExpiration: 0 }]);
        chats.push(["contact", { id: jid(n), name: chatName(n), pushname: chatName(n).split(" ")[0],
                                 isBusiness: n % 9 === 0, verifiedLevel: n % 3 }]);
      }
      await write(modelDb, chats);
      let total = chats.reduce((sum, [, value]) => sum + sizeOf(value), 0);
      const target = CONFIG.idbMb * 1048576;
      for (let k = 0; total < target;) {
        const model = [];
        const keys = [];
        for (let batch = 0; batch < BATCH_BYTES && total < target; k++) {
          const step = seedStep(next, k, now, me);
          for (const [, value] of [...step.records, ...step.key]) {
            const size = sizeOf(value);
            batch += size;
            total += size;
          }
          model.push(...step.records);
          keys.push(...step.key);
        }
        await write(modelDb, model);
        if (keys.length) await write(signalDb, keys);
      }
      await write(modelDb, [["meta", { key: "seed", account, bytes: total, at: Date.now() }]]);
      Object.assign(status, { idb: "seeded", idbBytes: total, seededNow: true,
                              seedMs: Math.round(performance.now() - started) });
    } finally {
      signalDb.close();
    }
  }

  // ---- in-memory models ---------------------------------------------------------------------
  class ChatModel {
    constructor(chat, contact) {
      Object.assign(this, chat);
      this.contact = contact || null;
      this.msgs = [];
      this.title = contact ? contact.name : chat.id;
    }
    get last() { return this.msgs[this.msgs.length - 1] || null; }
  }

  class MsgModel {
    constructor(message, chat) {
      Object.assign(this, message);
      this.chat = chat || null;
      this.preview = message.body.slice(0, 60);
      this.words = message.body.split(" ").length;
      this.search = message.body.toLowerCase();
    }
  }

  async function loadModels() {
    const tx = modelDb.transaction(["chat", "contact", "message"]);
    const [chats, contacts, messages] = await Promise.all(
      ["chat", "contact", "message"].map((store) => request(tx.objectStore(store).getAll())));
    const byId = new Map(contacts.map((contact) => [contact.id, contact]));
    const loaded = { chats: new Map(), messages: new Map() };
    for (const chat of chats) loaded.chats.set(chat.id, new ChatModel(chat, byId.get(chat.id)));
    messages.sort((a, b) => a.t - b.t);
    for (const message of messages) {
      const chat = loaded.chats.get(message.chatId);
      const model = new MsgModel(message, chat);
      loaded.messages.set(model.id, model);
      if (chat) chat.msgs.push(model);
    }
    models = loaded;
    status.models = loaded.messages.size;
  }

  // ---- periodic activity -------------------------------------------------------------------
  function tick() {
    status.ticks++;
    const next = rng(hash("tick:" + status.ticks) ^ Date.now());
    const now = Date.now();
    document.getElementById("heavy-clock").textContent = clock(now) + ":" +
      String(new Date(now).getSeconds()).padStart(2, "0");
    document.getElementById("heavy-presence").textContent =
      next() % 3 ? "online" : "last seen today at " + clock(now - 60_000 * (next() % 90));
    const typing = document.querySelector(".heavy-chat-status.typing");
    if (typing) {
      typing.classList.remove("typing");
      typing.textContent = typing.getAttribute("data-preview") || sentence(next, 3, 12);
    }
    const rows = document.querySelectorAll(".heavy-chat-status");
    const row = rows[next() % rows.length];
    row.setAttribute("data-preview", row.textContent);
    row.classList.add("typing");
    row.textContent = "typing\u2026";
    document.getElementById("heavy-typing").textContent = next() % 2 ? "typing\u2026" : "";
    if (modelDb && (status.idb === "seeded" || status.idb === "present")) {
      const presence = { id: jid(next() % CHATS), t: now,
                         type: next() % 2 ? "available" : "unavailable" };
      write(modelDb, [["presence", presence]]).catch(() => { /* closed by clear() */ });
    }
  }

  // ---- the hooks page.html calls ------------------------------------------------------------
  async function loggedIn(session) {
    buildShell(session.phone);
    mark();
    try {
      await seed(session);
      await loadModels();
    } catch (e) {
      status.idb = "failed: " + e;
    }
    mark();
    if (!timer) timer = setInterval(tick, CONFIG.tickMs);
  }

  async function clear() {
    clearInterval(timer);
    timer = null;
    if (modelDb) modelDb.close();
    modelDb = null;
    models = null;
    const gone = [MODEL.name, SIGNAL.name].map((name) => request(indexedDB.deleteDatabase(name)));
    const timeout = new Promise((resolve) => setTimeout(resolve, 5000));
    try { await Promise.race([Promise.all(gone), timeout]); } catch (e) { /* best effort */ }
    Object.assign(status, { idb: "none", idbBytes: 0, seededNow: false, models: 0 });
    mark();
  }

  window.fakesiteHeavy = { status, loggedIn, clear };
  registerWorker();
})();
