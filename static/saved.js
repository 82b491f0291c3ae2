// What the page remembers in this browser (localStorage), and the invitation a link brings.
//
// Invariants: reading and writing never throw (private mode, storage turned off): a setting that
// cannot be kept is simply not remembered. An invitation's token is kept here and taken out of the
// address bar, so it is neither bookmarked nor shared by copying the address.

const TOKEN_KEY = "parley.token"; // the invitation, from the link's #token=...

export function load(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

export function save(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // Private mode: the setting simply will not survive a reload.
  }
}

/** The invitation this browser holds (read on every connection), or null. */
export function invitation() {
  return load(TOKEN_KEY);
}

/** An invitation link carries its token in the fragment: keep it, and take it out of the address bar. */
export function takeInvitation() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  save(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}
