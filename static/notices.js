// Transient notices and the connection status pill.
//
// Invariant: info and warn notices hide themselves after NOTICE_MS; an error stays until the user
// dismisses it or the next notice arrives, so the latest problem is always the one on screen.

const NOTICE_MS = 6000;
const MAX_NOTICES = 4;

const area = document.getElementById("notices");
const statusEl = document.getElementById("status");

/** Show a notice. level is "info", "warn" or "error". */
export function notify(level, text) {
  if (!text) return;
  if (!["info", "warn", "error"].includes(level)) level = "info";
  for (const old of area.querySelectorAll('.notice[data-level="error"]')) old.remove();

  const el = document.createElement("div");
  el.className = "notice";
  el.dataset.level = level;
  el.setAttribute("role", level === "error" ? "alert" : "status");
  const body = document.createElement("span");
  body.className = "notice-text";
  body.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "notice-close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => el.remove());
  el.append(body, close);
  area.append(el);

  while (area.children.length > MAX_NOTICES) area.firstElementChild.remove();
  if (level !== "error") setTimeout(() => el.remove(), NOTICE_MS);
}

const STATUS_TITLES = {
  connecting: "Connecting to the server",
  connected: "Connected: voice and video are flowing",
  reconnecting: "Connection lost, trying again",
  rejected: "The server refused this session",
  offline: "The page could not load its socket client",
};

/** Set the status pill; state is one of the STATUS_TITLES keys, detail an optional tooltip. */
export function setStatus(state, detail) {
  statusEl.dataset.state = state;
  statusEl.textContent = state;
  statusEl.title = detail || STATUS_TITLES[state] || state;
}
