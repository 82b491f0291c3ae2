// Push-to-talk: the Space key and the #talk button, with mouse, pen or touch.
//
// Invariant: every talk_start the page sends is followed by exactly one talk_end, unless the
// server ended the recording itself (recording {active: false}); one hold comes from one source
// (the key or one pointer), and the other source cannot end it.

const IDLE_LABEL = "Hold to talk";
const RECORDING_LABEL = "Recording… release to send";

/**
 * Wire push-to-talk to button. canTalk() says whether a recording may start now; onStart and
 * onEnd send the signalling messages. Returns { serverRecording(active), cancel() }.
 */
export function setupTalk(button, { canTalk, onStart, onEnd }) {
  let holder = null; // "key", "toggle" or a pointer id

  const show = (recording) => {
    button.classList.toggle("recording", recording);
    button.textContent = recording ? RECORDING_LABEL : IDLE_LABEL;
    button.setAttribute("aria-pressed", String(recording));
  };

  const start = (source) => {
    if (holder !== null || !canTalk()) return;
    holder = source;
    show(true);
    onStart();
  };

  const end = (source) => {
    if (holder === null || holder !== source) return;
    holder = null;
    show(false);
    onEnd();
  };

  document.addEventListener("keydown", (e) => {
    if (!isSpace(e) || isTyping(e.target)) return;
    e.preventDefault(); // no page scroll, no click on a focused button
    if (e.repeat) return;
    start("key");
  });
  document.addEventListener("keyup", (e) => {
    if (!isSpace(e)) return;
    if (!isTyping(e.target)) e.preventDefault();
    end("key");
  });

  button.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    button.setPointerCapture?.(e.pointerId);
    start(e.pointerId);
  });
  for (const type of ["pointerup", "pointercancel", "pointerleave", "lostpointercapture"]) {
    button.addEventListener(type, (e) => end(e.pointerId));
  }
  button.addEventListener("contextmenu", (e) => e.preventDefault());
  // A click with no pointer behind it (Enter, a screen reader) toggles instead of holding.
  button.addEventListener("click", (e) => {
    if (e.detail !== 0) return;
    if (holder === null) start("toggle");
    else end(holder);
  });

  // A hold cannot outlive the page losing focus: the keyup or pointerup would never arrive.
  const releaseAll = () => holder !== null && end(holder);
  window.addEventListener("blur", releaseAll);
  document.addEventListener("visibilitychange", () => document.hidden && releaseAll());

  show(false);
  return {
    /** The server started or stopped recording on its own (e.g. the length limit). */
    serverRecording(active) {
      if (!active) holder = null;
      show(active);
    },
    /** Drop a hold without sending talk_end (the connection is gone). */
    cancel() {
      holder = null;
      show(false);
    },
    get holding() {
      return holder !== null;
    },
  };
}

function isSpace(e) {
  return (e.code === "Space" || e.key === " ") && !e.ctrlKey && !e.metaKey && !e.altKey;
}

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  return target.closest("input, textarea, select") !== null;
}
