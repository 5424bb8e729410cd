// Installed by the whatsapp driver in every document of a session's page, before the site's own
// scripts (shard/messages.py). It reports message elements as the page adds or changes them: a
// MutationObserver, so nothing polls or rescans the whole DOM. `__SELECTORS__` is replaced with
// the session's selectors.
(() => {
  const S = __SELECTORS__;
  const ACKS = { sent: 1, delivered: 2, read: 3, played: 4 };
  const reported = new Map();  // data-id -> ack last reported by this document
  let first = true;

  function ackOf(node) {
    const icon = node.querySelector(S.ack);
    if (!icon) return 0;
    return ACKS[(icon.getAttribute("aria-label") || "").trim().toLowerCase()] || 1;
  }

  function describe(node) {
    const text = node.querySelector(S.message_text);
    return {
      id: node.getAttribute("data-id") || "",
      ack: ackOf(node),
      body: text ? text.textContent : "",
      t: Number(node.getAttribute("data-t")) || 0,
    };
  }

  function collect(node, out) {
    if (node.nodeType !== 1) return;
    if (node.matches(S.observed)) out.push(node);
    for (const inner of node.querySelectorAll(S.observed)) out.push(inner);
  }

  function report(nodes) {
    // Before the login (no chat list yet) nothing is reported: what the page shows then is not
    // this account's. The first report after it is the history the page opened with.
    if (!document.querySelector(S.ready)) return;
    const batch = [];
    for (const node of nodes) {
      const message = describe(node);
      if (!message.id || (reported.get(message.id) ?? -1) >= message.ack) continue;
      reported.set(message.id, message.ack);
      batch.push(message);
    }
    if (batch.length || first) {
      window.__chatscale_messages({ first, messages: batch }).catch(() => {});
      first = false;
    }
  }

  new MutationObserver((records) => {
    const nodes = [];
    for (const record of records) {
      if (record.type === "childList") {
        for (const added of record.addedNodes) collect(added, nodes);
      } else if (record.target.nodeType === 1) {
        const owner = record.target.closest(S.observed);
        if (owner) nodes.push(owner);
      }
    }
    report(nodes);
  }).observe(document, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["aria-label", "data-icon"],
  });
})();
