// Applies one origin's part of a session snapshot (Playwright's storage_state format) in the
// session's own page, before the site's scripts run. Playwright's own restore opens a hidden page
// per context for this; doing it here saves that page (a renderer start per session) and makes
// restores cost about what creates do (docs/benchmarks.md).
//
// Runs as an init script: synchronously at document start, so localStorage is in place before
// the site reads it. IndexedDB is written inside the upgrade transaction of each database: the
// site's own open() of the same database queues behind it, so the site never sees it half
// written. A sessionStorage flag keeps a reload (or a quick redirect) from applying it twice.
(snapshot) => {
  const SPECIAL = { undefined, null: null, NaN, Infinity, "-Infinity": -Infinity, "-0": -0 };
  const TYPED = {
    i8: Int8Array, ui8: Uint8Array, ui8c: Uint8ClampedArray, i16: Int16Array, ui16: Uint16Array,
    i32: Int32Array, ui32: Uint32Array, f32: Float32Array, f64: Float64Array,
    bi64: BigInt64Array, bui64: BigUint64Array,
  };
  if (location.origin !== snapshot.origin) return;
  const FLAG = "__chatscale_restored";
  try {
    if (sessionStorage.getItem(FLAG)) return;
    sessionStorage.setItem(FLAG, "1");
  } catch (error) {
    return; // no storage for this document (sandboxed or opaque origin)
  }
  for (const { name, value } of snapshot.localStorage || []) localStorage.setItem(name, value);
  for (const database of snapshot.indexedDB || []) restoreDatabase(database);

  function restoreDatabase(info) {
    const request = indexedDB.open(info.name, info.version);
    request.onupgradeneeded = () => {
      const db = request.result;
      for (const store of info.stores) {
        const keyPath = store.keyPathArray ?? store.keyPath;
        const objects = db.createObjectStore(store.name, {
          keyPath,
          autoIncrement: store.autoIncrement,
        });
        for (const index of store.indexes) {
          objects.createIndex(index.name, index.keyPathArray ?? index.keyPath, {
            unique: index.unique,
            multiEntry: index.multiEntry,
          });
        }
        for (const record of store.records) {
          const value = "value" in record ? record.value : decode(record.valueEncoded, new Map());
          if ("key" in record) objects.add(value, record.key);
          else if ("keyEncoded" in record) objects.add(value, decode(record.keyEncoded, new Map()));
          else objects.add(value);
        }
      }
    };
    request.onsuccess = () => request.result.close();
    request.onerror = () => console.warn("chatscale: restore of IndexedDB", info.name, request.error);
  }

  // Values that are not plain JSON (typed arrays, dates, maps...) come in Playwright's serialized
  // form: an object with one tag key. `refs` resolves shared and cyclic references by id.
  function decode(value, refs) {
    if (value === null || typeof value !== "object") return value;
    if ("ref" in value) return refs.get(value.ref);
    if ("v" in value) return SPECIAL[value.v];
    if ("d" in value) return new Date(value.d);
    if ("u" in value) return new URL(value.u);
    if ("bi" in value) return BigInt(value.bi);
    if ("r" in value) return new RegExp(value.r.p, value.r.f);
    if ("e" in value) return Object.assign(new Error(value.e.m), { name: value.e.n, stack: value.e.s });
    if ("ta" in value) return new TYPED[value.ta.k](bytes(value.ta.b).buffer);
    if ("ab" in value) return bytes(value.ab.b).buffer;
    if ("a" in value) return fill(value.id, [], (array) => value.a.forEach((item) => array.push(decode(item, refs))));
    if ("m" in value) return fill(value.id, new Map(), (map) => value.m.forEach(({ k, v }) => map.set(decode(k, refs), decode(v, refs))));
    if ("s" in value) return fill(value.id, new Set(), (set) => value.s.forEach((item) => set.add(decode(item, refs))));
    if ("o" in value) {
      return fill(value.id, {}, (object) => {
        for (const { k, v } of value.o) if (k !== "__proto__") object[k] = decode(v, refs);
      });
    }
    return undefined;

    function fill(id, container, add) {
      refs.set(id, container);
      add(container);
      return container;
    }
  }

  function bytes(base64) {
    const binary = atob(base64);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  }
}
