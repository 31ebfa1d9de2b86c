// postoffice web UI. Plain JavaScript, no build step, no inline script (the page's CSP forbids it).
// Everything from a message is put on the page with textContent, never as markup; message HTML
// is only ever shown by the sandboxed iframe, from /api/v1/messages/{id}/html.
"use strict";

const PAGE_SIZE = 50;
const SOURCE_LIMIT = 1024 * 1024; // the Source tab shows at most this much; download for the rest

const state = {
  session: null,
  mailboxes: [],
  mailbox: null, // null: every mailbox the person may see
  folder: null, // null: every folder of the mailbox; else "INBOX", "Junk", ... (searched as in:)
  folders: [], // the folders of the mailbox shown, as GET .../folders lists them
  query: "",
  offset: 0,
  total: 0,
  messages: [],
  selected: -1,
  open: null, // the message shown, as the API returned it
  opening: null, // the id of the message being fetched to be shown
  tab: "html",
  remote: false,
  events: null,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const method = options.method || "GET";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  let body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && path !== "/api/v1/login") showLogin();
    throw new ApiError(response.status, data.error || response.statusText);
  }
  return data;
}

function toast(text) {
  const element = $("toast");
  element.textContent = text;
  element.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { element.hidden = true; }, 4000);
}

$("toast").addEventListener("click", () => { $("toast").hidden = true; });

// -- formatting --------------------------------------------------------------------------------

function humanSize(octets) {
  if (octets < 1024) return `${octets} B`;
  if (octets < 1024 * 1024) return `${(octets / 1024).toFixed(octets < 10240 ? 1 : 0)} KB`;
  return `${(octets / 1048576).toFixed(1)} MB`;
}

// The list always shows the day, not only the time: "Mar 3, 14:05" this year, "Mar 3, 2020" before.
const thisYearFormat = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "numeric", minute: "2-digit",
});
const otherYearFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function shortDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const format = date.getFullYear() === new Date().getFullYear() ? thisYearFormat : otherYearFormat;
  return format.format(date);
}

function fullDate(iso) {
  return iso ? fullFormat.format(new Date(iso)) : "";
}

function displayName(from) {
  // "Alice Example <alice@example.com>" -> "Alice Example"; a bare address stays as it is.
  const match = /^\s*"?([^"<]*?)"?\s*<[^>]*>\s*$/.exec(from || "");
  return (match && match[1]) || from || "(no sender)";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- session -------------------------------------------------------------------------------------

function showLogin() {
  if (state.events) { state.events.close(); state.events = null; }
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-address").focus();
}

async function boot() {
  try {
    state.session = await api("/api/v1/session");
  } catch (error) {
    if (error.status === 401) return showLogin();
    throw error;
  }
  start();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  const session = state.session;
  $("who").textContent = session.address ? `${session.address}${session.admin ? " (admin)" : ""}` : "";
  $("logout").hidden = !session.login_required;
  // Nothing of a previous session stays on the page.
  state.mailboxes = [];
  state.messages = [];
  state.selected = -1;
  closeMessage();
  readHash();
  renderMailboxes();
  connectEvents();
  refreshMailboxes();
  loadMessages();
  if (state.pendingOpen) openMessage(state.pendingOpen);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    state.session = await api("/api/v1/login", {
      method: "POST",
      json: { address: $("login-address").value, password: $("login-password").value },
    });
    $("login-password").value = "";
    start();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("/api/v1/logout", { method: "POST" }); } catch (error) { /* logged out anyway */ }
  state.session = null;
  history.replaceState(null, "", location.pathname + location.search); // the next person starts afresh
  showLogin();
});

// -- who may do what ------------------------------------------------------------------------------
// The server decides (web/auth.py); this only keeps the page from offering what it would refuse.
// An admin, and everyone in open mode, sees every mailbox; anyone else sees their own only.

function seesAll() {
  return Boolean(state.session && state.session.admin);
}

function mayUse(mailbox) {
  return seesAll() || (Boolean(mailbox) && mailbox === state.session.mailbox);
}

// -- where we are (kept in the address bar: reload, back and an edited address all work) -------

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  let mailbox = params.get("mailbox") || null;
  if (!seesAll()) {
    // Someone else's mailbox would only answer 403; show this person's own instead.
    if (mailbox && !mayUse(mailbox)) toast(`${mailbox} is not your mailbox.`);
    mailbox = state.session ? state.session.mailbox : null;
  }
  state.mailbox = mailbox;
  state.folder = (mailbox && params.get("folder")) || null;
  state.query = params.get("q") || "";
  state.offset = Math.max(0, Math.floor(Number(params.get("offset")))) || 0;
  state.pendingOpen = Number(params.get("id")) || null;
  $("search").value = state.query;
}

// push: a step the browser's Back button should undo (opening a message, another mailbox, a
// search, a page); otherwise the address is only brought up to date.
function writeHash(push = false) {
  const params = new URLSearchParams();
  if (state.mailbox) params.set("mailbox", state.mailbox);
  if (state.folder) params.set("folder", state.folder);
  if (state.query) params.set("q", state.query);
  if (state.offset) params.set("offset", String(state.offset));
  const id = state.open ? state.open.id : state.opening;
  if (id) params.set("id", String(id));
  const hash = params.toString();
  if (location.hash.slice(1) === hash) return;
  const url = hash ? `#${hash}` : location.pathname + location.search;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// The address changed under the page: edited by hand, or Back/Forward.
function followHash() {
  if ($("app").hidden) return;
  const where = () => [state.mailbox, state.folder, state.query, state.offset].join("\n");
  const before = where();
  readHash();
  if (where() !== before) {
    renderMailboxes();
    loadMessages();
  }
  const id = state.pendingOpen;
  if (!id) {
    if (state.open || state.opening) closeMessage();
  } else if (id !== (state.open && state.open.id) && id !== state.opening) {
    openMessage(id);
  }
  writeHash();
}

// Both fire for one edit of the address; the second finds nothing left to do.
window.addEventListener("hashchange", followHash);
window.addEventListener("popstate", followHash);

// -- mailboxes -------------------------------------------------------------------------------------

async function refreshMailboxes() {
  state.mailboxes = await api("/api/v1/mailboxes");
  state.folders = state.mailbox
    ? await api(`/api/v1/mailboxes/${encodeURIComponent(state.mailbox)}/folders`).catch(() => [])
    : [];
  renderMailboxes();
}

const refreshMailboxesSoon = debounce(() => refreshMailboxes().catch(() => {}), 250);

function renderMailboxes() {
  const list = $("mailbox-list");
  list.replaceChildren();
  let boxes = state.mailboxes;
  if (seesAll()) {
    const totalUnread = boxes.reduce((sum, box) => sum + box.unread, 0);
    list.append(mailboxItem(null, "All mailboxes", totalUnread));
  } else if (!boxes.length && state.session && state.session.mailbox) {
    boxes = [{ address: state.session.mailbox, total: 0, unread: 0 }]; // no mail yet
  }
  for (const box of boxes) {
    const item = mailboxItem(box.address, box.address, box.unread);
    // The folders of the mailbox shown (Maildir++: INBOX, Archive, Junk, Trash, ...), inside
    // its item: the list holds one item per mailbox.
    if (box.address === state.mailbox && state.folders.length) {
      const folders = element("div", "folders");
      folders.setAttribute("role", "group");
      folders.setAttribute("aria-label", `Folders of ${box.address}`);
      folders.append(...state.folders.map(folderButton));
      item.append(folders);
    }
    list.append(item);
  }
  const where = state.mailbox || (seesAll() ? "All mailboxes" : "No mailbox");
  $("list-title").textContent = state.folder ? `${where} · ${state.folder}` : where;
  // "Delete all" empties the whole mailbox, so it is not offered beside search results.
  const current = boxes.find((box) => box.address === state.mailbox);
  $("clear-mailbox").hidden = !(current && current.total > 0 && mayUse(current.address) && !state.query);
  renderJunkFilter();
}

function setDrawer(open) {
  $("app").classList.toggle("drawer-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
}

function mailboxItem(address, label, unread) {
  const item = element("li");
  const button = element("button");
  button.type = "button";
  if (address === state.mailbox) button.classList.add("current");
  button.append(element("span", "address", label), element("span", unread ? "badge" : "badge zero", String(unread)));
  button.title = label;
  button.addEventListener("click", () => {
    setDrawer(false);
    state.mailbox = address;
    state.folder = null;
    state.offset = 0;
    closeMessage();
    writeHash(true);
    refreshMailboxes().catch(() => {});
    loadMessages();
  });
  item.append(button);
  return item;
}

function folderButton(folder) {
  const button = element("button");
  button.type = "button";
  if (folder.name === state.folder) button.classList.add("current");
  const label = folder.name === "INBOX" ? "Inbox" : folder.name;
  button.append(element("span", "address", label), element("span", folder.unread ? "badge" : "badge zero", String(folder.unread)));
  button.title = `${label}: ${folder.total} messages`;
  button.dataset.folder = folder.name;
  button.addEventListener("click", () => {
    setDrawer(false);
    state.folder = folder.name;
    state.offset = 0;
    closeMessage();
    writeHash(true);
    renderMailboxes();
    loadMessages();
  });
  return button;
}

$("menu").addEventListener("click", () => setDrawer(!$("app").classList.contains("drawer-open")));

$("clear-mailbox").addEventListener("click", async () => {
  if (!state.mailbox) return;
  if (!confirm(`Delete every message in ${state.mailbox}?`)) return;
  try {
    const result = await api(`/api/v1/mailboxes/${encodeURIComponent(state.mailbox)}/messages`, { method: "DELETE" });
    toast(`Deleted ${result.deleted} messages`);
  } catch (error) { toast(error.message); }
  closeMessage();
  loadMessages();
  refreshMailboxes();
});

// -- the message list ----------------------------------------------------------------------------

function listUrl() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(state.offset) });
  if (state.mailbox) params.set("mailbox", state.mailbox);
  const folder = state.folder ? `in:"${state.folder}"` : "";
  const query = [state.query, folder].filter(Boolean).join(" ");
  if (query) params.set("q", query);
  return `/api/v1/messages?${params}`;
}

async function loadMessages() {
  let page;
  try {
    page = await api(listUrl());
  } catch (error) {
    toast(error.message);
    return;
  }
  const openId = state.open ? state.open.id : null;
  state.total = page.total;
  state.messages = page.messages;
  state.selected = state.messages.findIndex((message) => message.id === openId);
  renderList();
  writeHash();
}

const reloadSoon = debounce(() => loadMessages(), 250);

function renderList() {
  const list = $("message-list");
  list.replaceChildren(...state.messages.map(renderRow));
  $("list-empty").hidden = state.messages.length > 0;
  const first = state.total ? state.offset + 1 : 0;
  const last = state.offset + state.messages.length;
  $("page-info").textContent = state.total ? `${first}–${last} of ${state.total}` : "";
  $("list-count").textContent = state.query ? `${state.total} found` : "";
  $("newer").disabled = state.offset === 0;
  $("older").disabled = last >= state.total;
}

function renderRow(message, index) {
  const row = element("li");
  row.setAttribute("role", "option");
  row.dataset.id = String(message.id);
  // Junk (a DMARC quarantine) is listed, marked, and never shown as unread mail.
  const junk = message.folder === "Junk";
  if (junk) row.classList.add("junk");
  else if (!message.read) row.classList.add("unread");
  if (index === state.selected) { row.classList.add("selected"); row.setAttribute("aria-selected", "true"); }
  if (state.open && state.open.id === message.id) { row.classList.add("open"); row.setAttribute("aria-current", "true"); }
  const date = element("span", "date", shortDate(message.date));
  date.title = fullDate(message.date);
  const preview = element("span", "preview");
  // Which mailbox it came to matters only when the list mixes them.
  if (!state.mailbox) preview.append(element("span", "mailbox", message.mailbox));
  for (const tag of message.tags || []) preview.append(tagChip(tag));
  preview.append(element("span", "snippet", message.snippet || ""));
  const extra = element("span", "extra");
  if (message.has_attachments) {
    const clip = element("span", "clip");
    clip.title = "has attachments";
    clip.setAttribute("aria-label", "has attachments");
    extra.append(clip);
  }
  if (junk) {
    const badge = element("span", "junk-badge", "Junk");
    badge.title = "Filed in the Junk folder: its domain's DMARC policy asks for quarantine";
    badge.setAttribute("aria-label", badge.title);
    extra.append(badge);
  }
  const dmarc = message.authentication && message.authentication.dmarc;
  if (dmarc && dmarc.result === "fail") {
    const flag = element("span", "auth-flag", "DMARC");
    flag.title = `Failed DMARC: it may not come from ${dmarc.domain || "the domain in From"}`;
    flag.setAttribute("aria-label", flag.title);
    extra.append(flag);
  }
  extra.append(document.createTextNode(humanSize(message.size)));
  row.append(
    element("span", "sender", displayName(message.from)),
    date,
    element("span", "subject", message.subject || "(no subject)"),
    extra,
    preview,
  );
  row.title = `${message.from}\n${message.subject}\nTo ${message.mailbox}`;
  row.addEventListener("click", () => { select(index); openMessage(message.id, true); });
  return row;
}

// The open message's row is marked wherever it came from: a click, the keyboard, the address.
function markOpen() {
  const id = state.open ? state.open.id : null;
  for (const row of $("message-list").children) {
    const open = id !== null && row.dataset.id === String(id);
    row.classList.toggle("open", open);
    if (open) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
  }
  const index = id === null ? -1 : state.messages.findIndex((message) => message.id === id);
  if (index >= 0 && index !== state.selected) select(index);
}

function select(index) {
  if (!state.messages.length) return;
  state.selected = Math.max(0, Math.min(index, state.messages.length - 1));
  const rows = $("message-list").children;
  for (let i = 0; i < rows.length; i += 1) {
    rows[i].classList.toggle("selected", i === state.selected);
    rows[i].setAttribute("aria-selected", String(i === state.selected));
  }
  rows[state.selected].scrollIntoView({ block: "nearest" });
}

function turnPage(offset) {
  state.offset = offset;
  writeHash(true);
  loadMessages();
}

$("newer").addEventListener("click", () => turnPage(Math.max(0, state.offset - PAGE_SIZE)));
$("older").addEventListener("click", () => turnPage(state.offset + PAGE_SIZE));

function search(query) {
  state.query = query;
  state.offset = 0;
  writeHash(true);
  renderMailboxes();
  loadMessages();
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search($("search").value.trim());
  $("message-list").focus();
});
$("search").addEventListener("search", () => {
  // The clear button of a search field.
  if ($("search").value === "" && state.query) search("");
});

// A phone's search box is too narrow for the hint; it shows in full from a tablet's width up.
const narrow = window.matchMedia("(max-width: 700px)");
const SEARCH_HINT = "Search   from: to: subject: is:unread has:attachment tag: auth:fail in:junk";
// The Junk button: the search with or without in:junk (the list shows junk with a badge).
function renderJunkFilter() {
  const on = state.query.split(/\s+/).includes("in:junk");
  $("junk-filter").setAttribute("aria-pressed", String(on));
  $("junk-filter").classList.toggle("current", on);
}

$("junk-filter").addEventListener("click", () => {
  const terms = state.query.split(/\s+/).filter((term) => term);
  const on = terms.includes("in:junk");
  const query = (on ? terms.filter((term) => term !== "in:junk") : [...terms, "in:junk"]).join(" ");
  $("search").value = query;
  search(query);
});
function placeSearchHint() { $("search").placeholder = narrow.matches ? "Search" : SEARCH_HINT; }
narrow.addEventListener("change", placeSearchHint);
placeSearchHint();

// -- one message ---------------------------------------------------------------------------------

async function openMessage(id, push = false) {
  state.opening = id;
  let message;
  try {
    message = await api(`/api/v1/messages/${id}`);
  } catch (error) {
    if (state.opening !== id) return;
    state.opening = null;
    toast(error.status === 404 ? "That message is gone." : error.message);
    writeHash();
    return;
  }
  if (state.opening !== id) return; // another message was asked for meanwhile
  state.opening = null;
  state.open = message;
  state.remote = false;
  $("app").dataset.view = "message";
  $("view-empty").hidden = true;
  $("view").hidden = false;
  $("view-subject").textContent = message.subject || "(no subject)";
  $("view-from").textContent = message.from;
  $("view-to").textContent = message.to;
  $("view-date").textContent = fullDate(message.date);
  $("view-size").textContent = humanSize(message.size);
  $("download").href = `/api/v1/messages/${message.id}/raw`;
  $("download").setAttribute("download", `message-${message.id}.eml`);
  $("attachment-count").textContent = message.attachments.length ? `(${message.attachments.length})` : "";
  renderHeaders(message);
  renderAuthentication(message.authentication);
  renderTags();
  renderAttachments(message);
  $("tab-text").textContent = message.text ?? "(this message has no plain-text part)";
  $("tab-source").textContent = "";
  const tab = message.html !== null ? "html" : "text";
  showTab(state.tab === "html" || state.tab === "text" ? tab : state.tab);
  markOpen();
  writeHash(push);
  if (!message.read) setRead(message.id, true);
  else updateReadButton();
}

// The caller brings the address up to date (writeHash), pushing a step or not.
function closeMessage() {
  state.open = null;
  state.opening = null;
  $("view").hidden = true;
  $("view-empty").hidden = false;
  $("tab-html").removeAttribute("src");
  $("app").dataset.view = "list";
  markOpen();
}

function renderHeaders(message) {
  const body = $("headers-body");
  body.replaceChildren(...message.headers.map((header) => {
    const row = element("tr");
    row.append(element("th", "", header.name), element("td", "", header.value));
    return row;
  }));
}

// -- tags: from X-Tags, the plus-address, or set here (PUT /api/v1/messages/{id}/tags) -------------

// A tag in the list: clicking it searches for the messages with it.
function tagChip(tag) {
  const chip = element("button", "tag-chip", tag);
  chip.type = "button";
  chip.title = `Show messages tagged ${tag}: search tag:${tag}`;
  chip.addEventListener("click", (event) => {
    event.stopPropagation();
    $("search").value = `tag:${tag}`;
    search(`tag:${tag}`);
  });
  return chip;
}

function renderTags() {
  const tags = state.open ? state.open.tags || [] : [];
  $("view-tags").replaceChildren(...tags.map((tag) => {
    const item = element("li", "tag-chip", tag);
    const remove = element("button", "tag-remove", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove tag ${tag}`);
    remove.addEventListener("click", () => saveTags(state.open.id, tags.filter((other) => other !== tag)));
    item.append(remove);
    return item;
  }));
}

async function saveTags(id, tags) {
  let summary;
  try {
    summary = await api(`/api/v1/messages/${id}/tags`, { method: "PUT", json: { tags } });
  } catch (error) { toast(error.message); return; }
  applyTags(summary.id, summary.tags);
}

// The tags of message ``id`` are ``tags`` now: its row and, when open, its view say so.
function applyTags(id, tags) {
  const index = state.messages.findIndex((item) => item.id === id);
  if (index >= 0) {
    state.messages[index].tags = tags;
    const row = $("message-list").querySelector(`li[data-id="${id}"]`);
    if (row) row.replaceWith(renderRow(state.messages[index], index));
  }
  if (state.open && state.open.id === id) { state.open.tags = tags; renderTags(); }
}

$("tag-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const tag = $("tag-input").value.trim().toLowerCase();
  if (!state.open || !tag) return;
  $("tag-input").value = "";
  const tags = state.open.tags || [];
  if (!tags.includes(tag)) saveTags(state.open.id, [...tags, tag]);
});

// -- authentication results: what the server found checking the message on arrival -------------

const AUTH_GOOD = new Set(["pass"]);
const AUTH_BAD = new Set(["fail", "softfail"]);

function authBadge(label, result, tooltip) {
  const tone = AUTH_GOOD.has(result) ? "good" : AUTH_BAD.has(result) ? "bad" : "other";
  const badge = element("span", `auth-badge ${tone}`, `${label} ${result}`);
  badge.setAttribute("role", "listitem");
  badge.title = tooltip;
  return badge;
}

function renderAuthentication(auth) {
  const row = $("view-auth");
  // Mail the server did not check (sent by a user of this server, captured) shows nothing.
  row.hidden = !auth;
  if (!auth) { row.replaceChildren(); return; }
  const badges = [];
  if (auth.spf) {
    const about = auth.spf.domain ? ` for ${auth.spf.domain}` : "";
    badges.push(authBadge("SPF", auth.spf.result, `SPF ${auth.spf.result}${about}: was the sending server allowed to send its mail?`));
  }
  for (const signature of auth.dkim) {
    const badge = authBadge("DKIM", signature.result,
      `DKIM signature of ${signature.domain || "an unnamed domain"}` +
      `${signature.selector ? ` (selector ${signature.selector})` : ""}: ${signature.result}`);
    const names = [signature.domain && `d=${signature.domain}`, signature.selector && `s=${signature.selector}`].filter(Boolean);
    if (names.length) badge.append(element("span", "auth-names", ` (${names.join(", ")})`));
    badges.push(badge);
  }
  if (auth.dmarc) {
    const policy = auth.dmarc.policy ? `, policy ${auth.dmarc.policy}` : "";
    badges.push(authBadge("DMARC", auth.dmarc.result,
      `DMARC ${auth.dmarc.result} for the From domain${auth.dmarc.domain ? ` ${auth.dmarc.domain}` : ""}${policy}`));
  }
  if (auth.arc) {
    badges.push(authBadge("ARC", auth.arc.result, `ARC ${auth.arc.result}: the results earlier servers recorded`));
  }
  if (!badges.length) badges.push(authBadge("Checks", "none", "Checked on arrival, with no results"));
  row.replaceChildren(...badges);
}

function renderAttachments(message) {
  const list = $("tab-attachments");
  if (!message.attachments.length) {
    list.replaceChildren(element("li", "muted", "No attachments."));
    return;
  }
  list.replaceChildren(...message.attachments.map((attachment) => {
    const item = element("li");
    const link = element("a", "", attachment.name);
    link.href = attachment.url;
    link.setAttribute("download", attachment.name);
    item.append(link, element("span", "muted", `${attachment.content_type} · ${humanSize(attachment.size)}`));
    return item;
  }));
}

function showTab(name) {
  const message = state.open;
  if (!message) return;
  if (name === "html" && message.html === null) name = "text";
  state.tab = name;
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
    if (button.dataset.tab === "html") button.disabled = message.html === null;
  }
  for (const panel of document.querySelectorAll(".tab-panel")) panel.hidden = panel.id !== `tab-${name}`;
  $("remote-bar").hidden = !(name === "html" && message.remote_content && !state.remote);
  if (name === "html") {
    const url = `/api/v1/messages/${message.id}/html${state.remote ? "?remote=1" : ""}`;
    if ($("tab-html").getAttribute("src") !== url) $("tab-html").setAttribute("src", url);
  } else {
    $("tab-html").removeAttribute("src");
  }
  if (name === "source" && !$("tab-source").textContent) loadSource(message.id);
}

async function loadSource(id) {
  const response = await fetch(`/api/v1/messages/${id}/raw`, { credentials: "same-origin" });
  if (!response.ok || !response.body) { $("tab-source").textContent = "(source not available)"; return; }
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let text = "";
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    received += value.length;
    text += decoder.decode(value, { stream: true });
    if (received >= SOURCE_LIMIT) {
      reader.cancel();
      text += "\n\n[… shortened here; download the .eml for the whole message]";
      break;
    }
  }
  if (state.open && state.open.id === id) $("tab-source").textContent = text;
}

for (const button of document.querySelectorAll(".tabs button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}

$("load-remote").addEventListener("click", () => { state.remote = true; showTab("html"); });
$("back").addEventListener("click", () => { closeMessage(); writeHash(true); $("message-list").focus(); });

// Read-state changes show at once and reach the server one at a time per message, in the order
// they were made: opening a message marks it read, and a quick "u" right after must not race that
// first request and lose (both would otherwise say "read").
const readRequests = new Map();

function setRead(id, read) {
  applyRead(id, read);
  const previous = readRequests.get(id) ?? Promise.resolve();
  const request = previous.then(async () => {
    try {
      const summary = await api(`/api/v1/messages/${id}`, { method: "PATCH", json: { read } });
      if (readRequests.get(id) === request) applyRead(summary.id, summary.read);
    } catch (error) {
      toast(error.message);
      reloadSoon();
    }
  });
  readRequests.set(id, request);
  request.finally(() => { if (readRequests.get(id) === request) readRequests.delete(id); });
}

function applyRead(id, read) {
  const message = state.messages.find((item) => item.id === id);
  if (message) message.read = read;
  const row = $("message-list").querySelector(`li[data-id="${id}"]`);
  if (row) row.classList.toggle("unread", !read);
  if (state.open && state.open.id === id) state.open.read = read;
  updateReadButton();
  refreshMailboxesSoon();
}

function updateReadButton() {
  $("toggle-read").textContent = state.open && state.open.read ? "Mark unread" : "Mark read";
}

$("toggle-read").addEventListener("click", () => { if (state.open) setRead(state.open.id, !state.open.read); });
$("move-to").addEventListener("change", () => {
  const folder = $("move-to").value;
  $("move-to").value = "";
  if (state.open && folder) moveMessage(state.open.id, folder);
});

// A move is a Maildir rename into the other folder (made when missing); the message keeps its id.
async function moveMessage(id, folder) {
  let summary;
  try {
    summary = await api(`/api/v1/messages/${id}/move`, { method: "POST", json: { folder } });
  } catch (error) { toast(error.message); return; }
  toast(`Moved to ${folder === "INBOX" ? "Inbox" : folder}`);
  if (state.open && state.open.id === id) state.open.folder = summary.folder;
  if (state.folder && summary.folder !== state.folder) removeFromList(id);
  else refreshMailboxesSoon();
}
$("delete").addEventListener("click", () => { if (state.open) deleteMessage(state.open.id); });

async function deleteMessage(id) {
  const index = state.messages.findIndex((message) => message.id === id);
  try {
    await api(`/api/v1/messages/${id}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 404) { toast(error.message); return; }
  }
  removeFromList(id);
  if (state.messages.length) {
    select(Math.min(index, state.messages.length - 1));
    if (state.open && state.open.id === id) openMessage(state.messages[state.selected].id);
  } else if (state.open && state.open.id === id) {
    closeMessage();
    writeHash();
  }
}

function removeFromList(id) {
  const index = state.messages.findIndex((message) => message.id === id);
  if (index < 0) return;
  state.messages.splice(index, 1);
  state.total = Math.max(0, state.total - 1);
  if (state.selected > index) state.selected -= 1;
  renderList();
  refreshMailboxesSoon();
}

// -- live updates (Server-Sent Events) -----------------------------------------------------------

function connectEvents() {
  if (state.events) state.events.close();
  const source = new EventSource("/api/v1/events");
  state.events = source;
  source.addEventListener("open", () => { $("live").classList.add("on"); $("live").title = "Live"; });
  source.addEventListener("error", () => {
    $("live").classList.remove("on");
    $("live").title = "Reconnecting…";
    // The browser reconnects by itself; if the session ended, the next call shows the login.
    api("/api/v1/session").catch(() => {});
  });
  source.addEventListener("new", (event) => {
    const message = JSON.parse(event.data);
    refreshMailboxesSoon();
    if (state.mailbox && message.mailbox !== state.mailbox) return;
    if (state.query || state.offset) { reloadSoon(); return; }
    if (state.messages.some((item) => item.id === message.id)) return;
    state.messages.unshift(message);
    if (state.messages.length > PAGE_SIZE) state.messages.pop();
    state.total += 1;
    if (state.selected >= 0) state.selected += 1;
    renderList();
  });
  source.addEventListener("updated", (event) => {
    const change = JSON.parse(event.data);
    // While this page still has changes of its own in flight, their answers are the truth.
    if (change.tags) applyTags(change.id, change.tags);
    if (readRequests.has(change.id)) return;
    applyRead(change.id, change.read);
  });
  source.addEventListener("deleted", (event) => {
    const change = JSON.parse(event.data);
    removeFromList(change.id);
    if (state.open && state.open.id === change.id) { closeMessage(); writeHash(); }
  });
  source.addEventListener("cleared", (event) => {
    const change = JSON.parse(event.data);
    refreshMailboxesSoon();
    if (!state.mailbox || state.mailbox === change.mailbox) {
      if (state.open && state.open.mailbox === change.mailbox) { closeMessage(); writeHash(); }
      reloadSoon();
    }
  });
}

// -- keyboard --------------------------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
  if (typing) {
    if (event.key === "Escape") { event.target.blur(); $("message-list").focus(); }
    return;
  }
  if ($("app").hidden) return;
  switch (event.key) {
    case "j": case "ArrowDown":
      select(state.selected + 1); break;
    case "k": case "ArrowUp":
      select(state.selected < 0 ? 0 : state.selected - 1); break;
    case "Enter": case "o":
      if (state.selected >= 0) openMessage(state.messages[state.selected].id, true); break;
    case "Delete": case "#":
      if (state.selected >= 0) deleteMessage(state.messages[state.selected].id);
      else if (state.open) deleteMessage(state.open.id);
      break;
    case "u":
      if (state.open) setRead(state.open.id, !state.open.read); break;
    case "/":
      $("search").focus(); $("search").select(); break;
    case "Escape":
      if (state.open) { closeMessage(); writeHash(true); } break;
    default:
      return;
  }
  event.preventDefault();
});

function debounce(fn, delay) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, delay); };
}

boot().catch((error) => toast(error.message));
