// Push-to-talk: the Space key and the #talk button, with mouse, pen or touch.
//
// Invariant: every talk_start the page sends is followed by exactly one talk_end, unless the
// server ended the recording itself (recording {active: false}); one hold comes from one source
// (the key or one pointer), and the other source cannot end it. Space talks only when no other
// control has the focus: on a focused button, link, checkbox or menu it presses that control.

const IDLE_LABEL = "Hold to talk";
const RECORDING_LABEL = "Recording… release to send";

/**
 * Wire push-to-talk to button. canTalk() says whether a recording may start now; onStart and
 * onEnd send the signalling messages. Returns { serverRecording(active), cancel() }.
 */
export function setupTalk(button, { canTalk, onStart, onEnd, onChange = () => {} }) {
  let holder = null; // "key", "toggle" or a pointer id

  const show = (recording) => {
    button.classList.toggle("recording", recording);
    button.textContent = recording ? RECORDING_LABEL : IDLE_LABEL;
    button.setAttribute("aria-pressed", String(recording));
    onChange(recording);
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
    if (!isSpace(e) || isTyping(e.target) || isOtherControl(e.target, button)) return;
    e.preventDefault(); // no page scroll
    if (e.repeat) return;
    start("key");
  });
  document.addEventListener("keyup", (e) => {
    if (!isSpace(e)) return;
    if (holder !== "key") return;
    e.preventDefault();
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

  button.classList.remove("recording");
  button.textContent = IDLE_LABEL;
  button.setAttribute("aria-pressed", "false");
  return {
    /** The server started or stopped recording on its own (e.g. the length limit). */
    serverRecording(active) {
      if (!active) holder = null;
      show(active);
    },
    /** End the hold now, as if the key or button were released (the microphone was muted). */
    release() {
      if (holder !== null) end(holder);
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

/** A control of its own (not the talk button) that Space should press, toggle or open. */
function isOtherControl(target, talkButton) {
  if (!(target instanceof Element) || target === talkButton) return false;
  return target.closest('button, a[href], summary, select, [role="button"], [role="checkbox"], [role="switch"]') !== null;
}

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  return target.closest("input, textarea, select") !== null;
}
