// The page's one websocket, reconnecting with exponential backoff and jitter.
//
// States reported to `onState`: "connecting" (first attempt), "connected", "reconnecting".
// Frames are JSON objects both ways; `send` returns false when the socket is not open, and the
// caller decides what to keep for `onOpen` (conversation.js re-sends an unacknowledged
// chat.send, whose client_id makes the repeat harmless).
//
// The server closes a socket whose session ended with SESSION_ENDED, and refuses the handshake of
// one without a valid session, which the browser cannot tell from a network failure. After either,
// the socket asks `isSignedIn()` (an HTTP request with the page's cookie) before it tries again:
// still signed in (the session was renewed by a password change in another tab) means reconnect;
// signed out means `onSignedOut()` and no more attempts.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;
// A connection that lived this long resets the backoff; one that drops at once keeps growing it.
const STABLE_AFTER_MS = 5_000;
export const SESSION_ENDED = 4401;
// The new cookie of a renewed session comes in the response to the request that renewed it, which
// can land a moment after the server closed this socket: ask no sooner than this.
const RENEWED_COOKIE_WAIT_MS = 1_000;

export function socketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}${path}`;
}

export class ChatSocket {
  constructor(url, { onOpen, onFrame, onState, isSignedIn, onSignedOut }) {
    this.url = url;
    this.onOpen = onOpen;
    this.onFrame = onFrame;
    this.onState = onState;
    this.isSignedIn = isSignedIn;
    this.onSignedOut = onSignedOut;
    this.askFirst = false; // ask isSignedIn() before the next attempt
    this.ws = null;
    this.timer = null;
    this.attempt = 0;
    this.openedAt = 0;
    this.halted = false;
  }

  start() {
    this.connect();
    // Coming back online or to the tab is a good moment not to wait out the backoff.
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.onState(this.attempt === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.onState("connected");
      this.onOpen();
    });
    ws.addEventListener("message", (event) => {
      if (ws !== this.ws || typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      const sessionEnded = event.code === SESSION_ENDED;
      this.askFirst = sessionEnded || !this.openedAt; // told so, or refused at the handshake
      if (this.openedAt && Date.now() - this.openedAt > STABLE_AFTER_MS) this.attempt = 0;
      this.openedAt = 0;
      this.scheduleReconnect(sessionEnded ? RENEWED_COOKIE_WAIT_MS : 0);
    });
  }

  scheduleReconnect(atLeast = 0) {
    if (this.halted) return;
    const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
    const delay = Math.max(atLeast, ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    this.onState("reconnecting");
    this.timer = setTimeout(() => this.reconnect(), delay);
  }

  async reconnect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.askFirst) {
      this.askFirst = false;
      // null: the server could not be asked (it is down); the attempt tells more.
      const signedIn = await this.isSignedIn();
      if (this.halted) return;
      if (signedIn === false) {
        this.halt();
        this.onSignedOut();
        return;
      }
    }
    this.connect();
  }

  /** Stop for good (the session ended): close and never reconnect. */
  halt() {
    this.halted = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) this.ws.close();
    this.ws = null;
  }

  reconnectNow() {
    if (this.timer !== null) this.reconnect();
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}
