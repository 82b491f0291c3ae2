// Drives one page of Debian's Firefox ESR over WebDriver BiDi (puppeteer-core), for tests/support/firefox_driver.py.
//
// Invariant: one browser, one page, for the life of this process. Requests come on stdin, one JSON
// object a line: {"id": n, "op": ..., ...}; each gets exactly one answer line on stdout,
// {"id": n, "ok": true, "value": ...} or {"id": n, "ok": false, "error": "..."}, in the order they
// finish. Lines without an id are events: {"event": "ready", "version": ...} once Firefox is up,
// then {"event": "pageerror" | "console", ...} as the page emits them. When stdin closes (the test
// ended or died), Firefox is closed and this process exits: nothing outlives the test.
//
// Usage: node tests/support/firefox_driver.mjs '{"executablePath": "/usr/bin/firefox-esr", "profile": "/tmp/p"}'
// Firefox inherits this process's environment (PULSE_SERVER names its sound server).

import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

/** What a headless Firefox needs to call a server on loopback with a microphone nobody is asked about. */
const PREFS = {
  "media.navigator.streams.fake": true, // fake devices (the camera; tests may replace the microphone)
  "media.navigator.permission.disabled": true, // no permission prompt
  "media.navigator.permission.fake": true, // without it Firefox gathers no ICE candidates on a loopback-only host
  "media.peerconnection.ice.loopback": true, // 127.0.0.1 candidates
  "media.peerconnection.ice.obfuscate_host_addresses": false, // no mDNS names for host candidates
  "media.peerconnection.ice.default_address_only": false,
  // Autoplay keeps Firefox's defaults, as a user has them: the page must get its voice heard regardless
  // (it does: a page that captures the microphone may play sound; checked with autoplay blocked outright).
};

const options = JSON.parse(process.argv[2] || "{}");
const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");

const browser = await puppeteer.launch({
  browser: "firefox",
  protocol: "webDriverBiDi",
  executablePath: options.executablePath || "/usr/bin/firefox-esr",
  userDataDir: options.profile,
  headless: true,
  extraPrefsFirefox: { ...PREFS, ...(options.prefs || {}) },
  timeout: 60000,
  handleSIGINT: false,
});
const page = (await browser.pages())[0] || (await browser.newPage());
page.on("pageerror", (error) => send({ event: "pageerror", text: String(error?.stack || error) }));
page.on("console", (message) => send({ event: "console", type: message.type(), text: message.text() }));

/** The page's value of `expression`, or of `fn(...args)` when a function's source is given. */
async function evaluate({ expression, function: fn, args = [] }) {
  return await page.evaluate(fn ? `(${fn})(...${JSON.stringify(args)})` : expression);
}

/** Evaluates until the value is truthy (polling every `polling` ms); returns it, or fails after `timeout` ms. */
async function waitFor(request) {
  const { timeout = 30000, polling = 100 } = request;
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await evaluate(request);
    if (value) return value;
    if (Date.now() > deadline) {
      throw new Error(`waited ${timeout} ms for ${request.function || request.expression}; last value ${JSON.stringify(value)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, polling));
  }
}

const OPS = {
  initScript: ({ source }) => page.evaluateOnNewDocument(source).then(() => null),
  goto: ({ url, timeout = 30000 }) => page.goto(url, { timeout }).then((response) => response?.status() ?? null),
  reload: ({ timeout = 30000 }) => page.reload({ timeout }).then(() => null),
  evaluate,
  waitFor,
  keyDown: ({ key }) => page.keyboard.down(key).then(() => null),
  keyUp: ({ key }) => page.keyboard.up(key).then(() => null),
  click: ({ selector }) => page.click(selector).then(() => null),
  type: ({ selector, text }) => page.type(selector, text).then(() => null),
  press: ({ key }) => page.keyboard.press(key).then(() => null),
};

let closing = null;
function close() {
  closing ??= browser.close().catch(() => {});
  return closing;
}

send({ event: "ready", version: await browser.version() });

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (!line.trim()) return;
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    return send({ id: null, ok: false, error: `bad request line: ${error.message}` });
  }
  const { id, op } = request;
  try {
    if (op === "close") {
      await close();
      return send({ id, ok: true, value: null });
    }
    if (!OPS[op]) throw new Error(`unknown op ${op}`);
    send({ id, ok: true, value: (await OPS[op](request)) ?? null });
  } catch (error) {
    send({ id, ok: false, error: String(error?.message || error) });
  }
});
lines.on("close", async () => {
  await close();
  process.exit(0);
});
process.on("SIGTERM", async () => {
  await close();
  process.exit(0);
});
