// The reviewer console: one WebSocket to /reviewer (protocol wraith.reviewer.v1),
// pending requests with approve/deny, and recent decisions.
//
// Every string from the hub reaches the page through textContent (never
// innerHTML), and commands are shown so that nothing hides: control
// characters become visible escapes (ESC -> \x1b) and every character outside
// printable ASCII becomes U+XXXX, each in a highlighted <span class="esc">.
"use strict";

(function () {
  const SUBPROTOCOL = "wraith.reviewer.v1";
  const RETRY_FIRST = 1000;
  const RETRY_MAX = 30000;

  const state = {
    pending: new Map(), // id -> {request, card}
    socket: null,
    attempt: 0,
    opened: false,
    watching: null, // the session whose screen is shown
  };

  function $(id) {
    return document.getElementById(id);
  }

  // --- showing text so that nothing hides ------------------------------------

  const CONTROL_NAMES = {
    0: "NUL", 7: "BEL", 8: "BS", 9: "TAB", 10: "LF", 11: "VT", 12: "FF", 13: "CR",
    27: "ESC", 127: "DEL",
  };
  // Lenient mode (screen, reasons): controls, format characters (zero-width,
  // bidi overrides), separators, private-use, unassigned and surrogates.
  const HIDING = /[\p{C}\p{Z}]/u;

  function hex(n, width) {
    return n.toString(16).toUpperCase().padStart(width, "0");
  }

  function marker(cp, strict) {
    if (cp < 0x20 || cp === 0x7f || (cp >= 0x80 && cp <= 0x9f)) {
      const short = { 9: "\\t", 10: "\\n", 13: "\\r" }[cp];
      return [
        short || "\\x" + hex(cp, 2).toLowerCase(),
        "control character " + (CONTROL_NAMES[cp] || "U+" + hex(cp, 4)),
      ];
    }
    if (cp === 0x20) return null;
    const ch = String.fromCodePoint(cp);
    if (strict ? cp > 0x7e : HIDING.test(ch)) {
      return ["U+" + hex(cp, 4), "character U+" + hex(cp, 4) + " (not printable ASCII)"];
    }
    return null;
  }

  // A fragment showing `text`: strict for what will run (command, typed, user,
  // target...), lenient for context (screen, reasons).
  function shown(text, strict) {
    const fragment = document.createDocumentFragment();
    let plain = "";
    const flush = function () {
      if (plain) {
        fragment.appendChild(document.createTextNode(plain));
        plain = "";
      }
    };
    for (const ch of String(text)) {
      const cp = ch.codePointAt(0);
      const mark = marker(cp, strict);
      if (mark === null) {
        plain += ch;
        continue;
      }
      flush();
      const span = document.createElement("span");
      span.className = "esc";
      span.textContent = mark[0];
      span.title = mark[1];
      fragment.appendChild(span);
      // A pasted script reads line by line: break after each newline mark
      // (the mark stays, so the break cannot be mistaken for a wrap).
      if (cp === 10) fragment.appendChild(document.createElement("br"));
    }
    flush();
    return fragment;
  }

  function el(tag, className, text, strict) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.appendChild(shown(text, strict !== false));
    return node;
  }

  function when(iso) {
    const t = Date.parse(iso);
    return isNaN(t) ? String(iso || "") : new Date(t).toLocaleTimeString();
  }

  // --- pending requests ---------------------------------------------------------

  function field(list, label, value, strict) {
    list.appendChild(el("dt", null, label));
    const dd = el("dd", null, value === undefined || value === null ? "" : value, strict);
    list.appendChild(dd);
    return dd;
  }

  function requestCard(request) {
    const card = el("article", "request kind-" + (request.kind || "unknown").replace(/[^a-z]/g, ""));
    card.dataset.id = request.id;

    const head = el("header", "request-head");
    head.appendChild(el("span", "kind", request.kind));
    const who = el("span", "who-target");
    who.appendChild(shown(request.user || "?", true));
    who.appendChild(document.createTextNode(" → "));
    who.appendChild(shown(request.target || "?", true));
    head.appendChild(who);
    if (request.risk) {
      const score = Number(request.risk.score);
      const level = score >= 70 ? "high" : score >= 40 ? "medium" : "low";
      head.appendChild(el("span", "risk risk-" + level, "risk " + score));
    }
    const expires = el("span", "expires");
    expires.dataset.expires = request.expires || "";
    head.appendChild(expires);
    card.appendChild(head);

    if (request.mismatch) {
      card.appendChild(
        el(
          "p",
          "mismatch-warning",
          "The line on the target's screen differs from what the operator typed. Check both.",
          false,
        ),
      );
    }

    const commands = el("div", "commands" + (request.mismatch ? " side-by-side" : ""));
    const rendered = el("div", "command-box");
    const label = request.kind === "shell" ? "Command (as the target's terminal shows it)" : "Command";
    rendered.appendChild(el("div", "label", label));
    rendered.appendChild(el("pre", "cmd command", request.command));
    commands.appendChild(rendered);
    if (request.mismatch) {
      const typed = el("div", "command-box");
      typed.appendChild(el("div", "label", "Typed (from the operator's keystrokes)"));
      typed.appendChild(el("pre", "cmd typed", request.typed));
      commands.appendChild(typed);
    }
    card.appendChild(commands);

    if (request.risk && Array.isArray(request.risk.reasons) && request.risk.reasons.length) {
      const reasons = el("ul", "risk-reasons");
      for (const reason of request.risk.reasons) reasons.appendChild(el("li", null, reason, false));
      card.appendChild(reasons);
    }

    const details = el("dl", "details");
    field(details, "user", request.user);
    field(details, "client", request.client);
    field(details, "target", request.target);
    field(details, "session", request.session);
    field(details, "gateway", request.gateway);
    field(details, "request", request.id);
    field(details, "received", when(request.received), false);
    card.appendChild(details);

    if (Array.isArray(request.screen) && request.screen.length) {
      const screen = el("details", "screen-box");
      screen.open = true;
      screen.appendChild(el("summary", null, "Screen before the command (" + request.screen.length + " lines)"));
      const pre = el("pre", "screen");
      request.screen.forEach(function (line, i) {
        if (i) pre.appendChild(document.createTextNode("\n"));
        pre.appendChild(shown(line, false));
      });
      screen.appendChild(pre);
      card.appendChild(screen);
    }

    const form = el("form", "decide");
    const reason = document.createElement("input");
    reason.type = "text";
    reason.name = "reason";
    reason.className = "reason";
    reason.maxLength = 1000;
    reason.placeholder = "Reason (shown to the operator)";
    reason.setAttribute("aria-label", "reason");
    form.appendChild(reason);
    const approve = el("button", "approve", "Approve", false);
    approve.type = "button";
    approve.dataset.action = "approve";
    const deny = el("button", "deny", "Deny", false);
    deny.type = "button";
    deny.dataset.action = "deny";
    form.appendChild(approve);
    form.appendChild(deny);
    const message = el("span", "message");
    message.setAttribute("role", "status");
    form.appendChild(message);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
    });
    for (const button of [approve, deny]) {
      button.addEventListener("click", function () {
        decide(request.id, button.dataset.action, reason.value, card);
      });
    }
    card.appendChild(form);
    return card;
  }

  function decide(id, decision, reason, card) {
    const socket = state.socket;
    const message = card.querySelector(".message");
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      message.textContent = "Not connected to the hub; try again when it reconnects.";
      return;
    }
    for (const button of card.querySelectorAll("button")) button.disabled = true;
    message.textContent = decision === "approve" ? "approving…" : "denying…";
    socket.send(JSON.stringify({ type: "decide", id: id, decision: decision, reason: reason }));
  }

  function addPending(request) {
    if (state.pending.has(request.id)) return;
    const card = requestCard(request);
    state.pending.set(request.id, { request: request, card: card });
    $("pending").appendChild(card);
    updateCounts();
    tick();
  }

  function removePending(id) {
    const entry = state.pending.get(id);
    if (!entry) return;
    entry.card.remove();
    state.pending.delete(id);
    updateCounts();
  }

  function updateCounts() {
    $("pending-count").textContent = String(state.pending.size);
    $("none-pending").hidden = state.pending.size > 0;
    document.title = (state.pending.size ? "(" + state.pending.size + ") " : "") + "wraith approval hub";
  }

  function tick() {
    const now = Date.now();
    for (const node of document.querySelectorAll(".expires")) {
      const t = Date.parse(node.dataset.expires);
      if (isNaN(t)) {
        node.textContent = "";
        continue;
      }
      const left = Math.round((t - now) / 1000);
      node.textContent = left > 0 ? "expires in " + left + " s" : "expired";
      node.classList.toggle("soon", left <= 30);
    }
  }

  // --- history -------------------------------------------------------------------------

  const OUTCOMES = { approve: "approved", deny: "denied", cancelled: "cancelled", expired: "expired" };

  function addHistory(entry) {
    const request = entry.request || {};
    const row = document.createElement("tr");
    row.className = "outcome-" + (OUTCOMES[entry.outcome] || "other");
    row.dataset.id = entry.id;
    row.appendChild(el("td", "when", when(entry.at), false));
    row.appendChild(el("td", "outcome", OUTCOMES[entry.outcome] || entry.outcome, false));
    row.appendChild(el("td", "reviewer", entry.reviewer || "", true));
    row.appendChild(el("td", "reason", entry.reason || "", false));
    const who = el("td", "who-target");
    who.appendChild(shown(request.user || "?", true));
    who.appendChild(document.createTextNode(" → "));
    who.appendChild(shown(request.target || "?", true));
    row.appendChild(who);
    row.appendChild(el("td", "kind-cell", request.kind || ""));
    const command = el("td", "command-cell");
    command.appendChild(el("pre", "cmd", request.command || ""));
    row.appendChild(command);
    const rows = $("history-rows");
    rows.insertBefore(row, rows.firstChild);
    while (rows.children.length > 200) rows.removeChild(rows.lastChild);
    $("none-history").hidden = true;
    $("history").hidden = false;
  }

  // --- the socket -------------------------------------------------------------------------

  function setStatus(text, cls) {
    const status = $("status");
    status.textContent = text;
    status.className = "status " + cls;
  }

  function handle(message) {
    switch (message.type) {
      case "snapshot":
        state.attempt = 0;
        for (const id of Array.from(state.pending.keys())) removePending(id);
        $("history-rows").textContent = "";
        for (const request of message.pending || []) addPending(request);
        for (const entry of message.history || []) addHistory(entry);
        showGateways(message.gateways || []);
        showSessions(message.sessions || []);
        if (state.watching) watch(state.watching);
        setStatus("live", "live");
        break;
      case "request":
        addPending(message.request);
        break;
      case "resolved":
        removePending(message.id);
        addHistory(message);
        break;
      case "gateways":
        showGateways(message.gateways || []);
        break;
      case "sessions":
        showSessions(message.sessions || []);
        break;
      case "session":
        showScreen(message);
        break;
      case "ack": {
        const entry = state.pending.get(message.id);
        if (entry && !message.ok) {
          entry.card.querySelector(".message").textContent = "Refused: " + message.error;
          for (const button of entry.card.querySelectorAll("button")) button.disabled = false;
        }
        break;
      }
      case "error":
        setStatus("the hub refused a message: " + message.error, "error");
        break;
      default:
        break;
    }
  }

  // --- live sessions: read only, the socket has no way to send input ----------------

  function watch(session) {
    state.watching = session;
    const socket = state.socket;
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "watch", session: session }));
    }
    $("live-view").hidden = session === null;
    $("live-session").textContent = "";
    if (session !== null) $("live-session").appendChild(shown(session, false));
  }

  function showSessions(sessions) {
    const list = $("live-sessions");
    list.textContent = "";
    for (const entry of sessions) {
      // {session, gateway, user, client, target, kind, pty, columns, rows, started}
      const session = typeof entry === "string" ? entry : entry.session;
      const item = el("li", "live-session");
      item.dataset.session = session;
      if (typeof entry === "object") {
        item.appendChild(el("strong", "who", entry.user + "@" + entry.target));
        item.appendChild(
          el(
            "span",
            "where",
            entry.kind +
              (entry.pty ? " " + entry.columns + "x" + entry.rows : "") +
              " from " +
              entry.client +
              " via " +
              entry.gateway +
              ", since " +
              when(entry.started)
          )
        );
      }
      item.appendChild(el("code", null, session, false));
      const button = el("button", "watch", "Watch");
      button.type = "button";
      button.addEventListener("click", function () {
        watch(session);
      });
      item.appendChild(button);
      list.appendChild(item);
    }
    $("live-count").textContent = String(sessions.length);
    $("live-section").hidden = sessions.length === 0 && state.watching === null;
  }

  function showScreen(message) {
    if (message.session !== state.watching) return;
    const pre = $("live-screen");
    pre.textContent = "";
    (message.lines || []).forEach(function (line, i) {
      if (i) pre.appendChild(document.createTextNode("\n"));
      pre.appendChild(shown(line, false));
    });
    const status = $("live-state");
    status.textContent = message.live ? "live" : "ended";
    status.className = "live-state " + (message.live ? "on" : "off");
  }

  function showGateways(gateways) {
    const names = gateways.map(function (g) {
      return g.name;
    });
    const node = $("gateways");
    node.textContent = "";
    node.appendChild(
      shown(
        gateways.length
          ? gateways.length + " gateway" + (gateways.length > 1 ? "s" : "") + ": " + names.join(", ")
          : "no gateway connected",
        false,
      ),
    );
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let socket;
    try {
      socket = new WebSocket(scheme + location.host + "/reviewer", SUBPROTOCOL);
    } catch (e) {
      retry();
      return;
    }
    state.socket = socket;
    state.opened = false;
    socket.addEventListener("open", function () {
      state.opened = true;
    });
    socket.addEventListener("message", function (event) {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (message && typeof message === "object") handle(message);
    });
    socket.addEventListener("close", function (event) {
      state.socket = null;
      if (event.code === 4001) {
        location.href = "/login";
        return;
      }
      setStatus("disconnected; reconnecting…", "down");
      for (const entry of state.pending.values()) {
        for (const button of entry.card.querySelectorAll("button")) button.disabled = true;
      }
      retry();
    });
  }

  function retry() {
    state.attempt += 1;
    const delay = Math.min(RETRY_MAX, RETRY_FIRST * Math.pow(2, state.attempt - 1));
    setTimeout(function () {
      // Still logged in? A refused socket looks like any other failure.
      fetch("/session", { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status === 401) location.href = "/login";
          else connect();
        })
        .catch(function () {
          connect();
        });
    }, delay * (0.5 + 0.5 * Math.random()));
  }

  document.addEventListener("DOMContentLoaded", function () {
    updateCounts();
    $("history").hidden = true;
    $("live-close").addEventListener("click", function () {
      watch(null);
      $("live-section").hidden = $("live-sessions").children.length === 0;
    });
    connect();
    setInterval(tick, 1000);
  });
})();
