// What depends on the screen: hints for keyboards or touch, the dismissable banner, and on narrow
// screens the camera preview as a small thumbnail the user can drag out of the way.
//
// Invariant: the hint never names a key on a touch screen, and a banner the user dismissed stays
// dismissed (for that text) across reloads.

const TOUCH = window.matchMedia("(hover: none) and (pointer: coarse)");
const NARROW = window.matchMedia("(max-width: 819px)");
const BANNER_KEY = "parley.bannerDismissed";
const THUMB_KEY = "parley.thumbnail";

const HINTS = {
  keys: "Hold <kbd>Space</kbd> to talk · release to send",
  touch: "Hold the talk button and speak · release to send",
  handsFree: "Hands-free: just talk, Parley answers when you pause · talk over it to interrupt",
};
const EMPTY = {
  keys: "Hold Space (or the talk button) and speak, or type below.",
  touch: "Hold the talk button and speak, or type below.",
  handsFree: "Just talk: Parley answers when you pause. Or type below.",
};

export function setupLayout(ui, { load, save }) {
  const preview = ui.video.closest(".preview");

  function showMode() {
    const mode = ui.handsFree.checked ? "handsFree" : TOUCH.matches ? "touch" : "keys";
    ui.hint.innerHTML = HINTS[mode];
    ui.chat.dataset.empty = EMPTY[mode];
    document.body.dataset.handsFree = String(ui.handsFree.checked);
    document.body.dataset.touch = String(TOUCH.matches);
  }
  TOUCH.addEventListener?.("change", showMode);

  function showBanner(text) {
    ui.bannerText.textContent = text;
    ui.banner.hidden = !text || load(BANNER_KEY) === text;
  }
  document.getElementById("banner-close").addEventListener("click", () => {
    save(BANNER_KEY, ui.bannerText.textContent);
    ui.banner.hidden = true;
  });

  // ---- the movable thumbnail (narrow screens only) ----
  let drag = null;
  const place = (x, y) => {
    const box = preview.getBoundingClientRect();
    const left = Math.min(Math.max(0, x), window.innerWidth - box.width);
    const top = Math.min(Math.max(0, y), window.innerHeight - box.height);
    preview.style.left = `${left}px`;
    preview.style.top = `${top}px`;
    preview.style.right = "auto";
    return { left, top };
  };
  const restore = () => {
    if (!NARROW.matches) {
      preview.style.left = preview.style.top = preview.style.right = "";
      return;
    }
    try {
      const saved = JSON.parse(load(THUMB_KEY) || "null");
      if (saved) place(saved.left, saved.top);
    } catch {
      // A damaged setting: the default corner.
    }
  };
  preview.addEventListener("pointerdown", (e) => {
    if (!NARROW.matches) return;
    const box = preview.getBoundingClientRect();
    drag = { id: e.pointerId, dx: e.clientX - box.left, dy: e.clientY - box.top };
    preview.setPointerCapture?.(e.pointerId);
    preview.classList.add("dragging");
    e.preventDefault();
  });
  preview.addEventListener("pointermove", (e) => {
    if (drag?.id === e.pointerId) place(e.clientX - drag.dx, e.clientY - drag.dy);
  });
  const drop = (e) => {
    if (drag?.id !== e.pointerId) return;
    drag = null;
    preview.classList.remove("dragging");
    const box = preview.getBoundingClientRect();
    save(THUMB_KEY, JSON.stringify({ left: box.left, top: box.top }));
  };
  preview.addEventListener("pointerup", drop);
  preview.addEventListener("pointercancel", drop);
  NARROW.addEventListener?.("change", restore);
  window.addEventListener("resize", restore);
  restore();

  return { showMode, showBanner };
}
