// The conversation's controls around the chat: the typed message, New conversation, Download.
//
// Invariants: a typed message leaves the box only once the server acknowledged it (unsent while
// disconnected, kept when unconfirmed or refused, so it can be sent again); the chat is cleared
// only once the server confirmed it forgot the conversation. While either waits for the server,
// the state returned says so (sending, forgetting).

import { hasMessages, renderHistory, transcriptMarkdown } from "./chat.js";
import { notify } from "./notices.js";

const ACK_MS = 5000; // a typed message the server has not confirmed by then stays in the box

/**
 * Wire the text form, New conversation and Download in ui. parley.socket is the current socket,
 * ready() says whether the server welcomed it; unlockAudio() on a user's send; refresh() after
 * each change. Returns { sending, forgetting }, kept current.
 */
export function setupControls(ui, { parley, ready, unlockAudio, refresh }) {
  const awaiting = { sending: false, forgetting: false };

  function submitText(e) {
    e.preventDefault();
    const text = ui.input.value.trim();
    if (!text || awaiting.sending) return;
    if (!ready()) {
      notify("warn", "Not connected to Parley: your message is still in the box. Send it once the status says Ready.");
      return;
    }
    unlockAudio();
    awaiting.sending = true;
    refresh();
    parley.socket.timeout(ACK_MS).emit("text", { text }, (err, ack) => {
      awaiting.sending = false;
      if (err) notify("warn", "The server did not confirm your message, so it is still in the box. Send it again when Parley is back.");
      else if (ack?.ok && ui.input.value.trim() === text) ui.input.value = "";
      // Refused (too long, too many turns): the server's notice said why, and the text stays to fix.
      refresh();
    });
  }

  function newConversation() {
    if (!ready()) return notify("warn", "Not connected to Parley: try again once the status says Ready.");
    if (hasMessages() && !window.confirm("Start a new conversation? Parley will forget this one.")) return;
    awaiting.forgetting = true;
    parley.socket.timeout(ACK_MS).emit("new_conversation", {}, (err, ack) => {
      awaiting.forgetting = false;
      if (err || !ack?.ok) return notify("error", "The server did not confirm, so the conversation was not cleared. Try again.");
      renderHistory([], { all: true });
      notify("info", "New conversation: Parley has forgotten the previous one.");
      refresh();
    });
  }

  function downloadTranscript() {
    const blob = new Blob([transcriptMarkdown()], { type: "text/markdown;charset=utf-8" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `parley-${new Date().toISOString().slice(0, 16).replace(/[:T]/g, "-")}.md`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  ui.form.addEventListener("submit", submitText);
  ui.newConversation.addEventListener("click", newConversation);
  ui.download.addEventListener("click", downloadTranscript);
  return awaiting;
}
