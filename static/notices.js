// Transient notices and the one status line.
//
// Invariant: info and warn notices hide themselves after NOTICE_MS; an error stays until the user
// dismisses it or the next notice arrives, so the latest problem is always the one on screen.
// Notices sit in the page's flow between the messages and the composer (never over the newest
// message: the chat gets shorter instead).

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

const STATUS_LABELS = {
  connecting: "Connecting",
  ready: "Ready",
  "media-lost": "Media lost",
  reconnecting: "Reconnecting",
  full: "Server full",
  denied: "Permission denied",
  refused: "Not let in",
  offline: "Offline",
};

const statusLabel = statusEl.querySelector(".status-label");
const statusReason = statusEl.querySelector(".status-reason");

/** Show the one status: state is a STATUS_LABELS key, reason what the user should know about it. */
export function setStatus(state, reason) {
  const label = STATUS_LABELS[state] || state;
  statusEl.dataset.state = state;
  if (statusLabel.textContent !== label) statusLabel.textContent = label;
  if (statusReason.textContent !== (reason || "")) statusReason.textContent = reason || "";
  statusReason.hidden = !reason;
}
