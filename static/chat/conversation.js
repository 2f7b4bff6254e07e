// The conversation as this tab knows it: its messages' views in order, the send waiting for the
// server's answer, the Stop on its way, the daily budget's figures. Frames from the server change
// it through `apply(frame)` (docs/protocol.md); what changed reaches the page through the
// listeners given to the constructor. Nothing here touches the document, so it runs under Node's
// test runner with stand-in views (tests/js/conversation.test.mjs).
//
// Views are made by the page's `createView(frame, seq)` (render.js in the browser); this module
// calls only their methods: apply, applyStatus, applySnapshot, applyDelta, focusVersion, and reads
// id, role and status.

export const UNFINISHED = new Set(["queued", "streaming"]);

// Error codes telling why the socket's session ended (docs/protocol.md); the server closes the
// socket next, and the socket asks whether this browser is still signed in (socket.js).
const SESSION_ENDINGS = new Set([
  "logged_out",
  "session_expired",
  "password_changed",
  "account_disabled",
  "account_deleted",
]);

// A delta gone missing asks for a fresh snapshot, at most this often.
const RESYNC_INTERVAL_MS = 1000;

function uuid4() {
  const crypto = globalThis.crypto;
  if (crypto.randomUUID) return crypto.randomUUID();
  // Plain-HTTP deployments are not a secure context and lack randomUUID.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function nothing() {}

/** What the page hears; each is optional. */
const LISTENERS = {
  conversation: nothing, // (conversation): the tab now shows this conversation (a new chat got one)
  acknowledged: nothing, // (conversation): the server took this tab's send into it
  subscribed: nothing, // (conversation): the server's record of it after a (re)subscribe
  added: nothing, // (view): a new message, to put at the end of the page
  removed: nothing, // (view): a message gone from the page (another version took its place)
  replaced: nothing, // (views): the whole list, after a (re)subscribe or a change of branch
  changed: nothing, // (view, {streaming}): a view to render again
  composer: nothing, // (): busy, pending or stopping may have changed
  budget: nothing, // (budget): today's figures from a message.done
  done: nothing, // (frame): an answer ended
  updated: nothing, // (conversation): pinned, archived or restored, in this tab or another
  error: nothing, // (frame): an error frame that did not end the session
};

// One handler per frame type, called with the state (ConversationState below) as `this`.
const FRAME_HANDLERS = {
  "conversation.created"(frame) {
    if (this.conversation === null && this.pendingSend?.frame.conversation === null) {
      this.setConversation(frame.conversation);
    }
  },

  "conversation.subscribed"(frame) {
    if (!this.belongsHere(frame.conversation.id)) return;
    this.conversation = frame.conversation;
    this.on.subscribed(frame.conversation);
    this.stopping = null; // a Stop lost with the old socket can be pressed again
    this.resubscribing = false;
    this.replaceMessages(frame.messages);
    this.on.composer();
  },

  "conversation.path"(frame) {
    if (!this.belongsHere(frame.conversation)) return;
    this.replaceMessages(frame.messages);
    this.on.composer();
    const focus = this.focusAfterPath;
    this.focusAfterPath = null;
    if (focus) this.order[focus.position]?.focusVersion(focus.direction);
  },

  "message.created"(frame) {
    if (this.conversation === null && this.pendingSend?.frame.conversation === null) {
      // A re-sent first message whose conversation.created was lost with the old socket.
      this.setConversation({ id: frame.conversation, title: this.pendingSend.frame.text.slice(0, 60) });
    }
    if (!this.belongsHere(frame.conversation)) return;
    const message = frame.message;
    if (this.pendingSend !== null) {
      // Acknowledged. Another tab's send into this conversation while ours is unacknowledged
      // would make the server refuse ours as busy, with an error naming our client_id.
      this.pendingSend = null;
      this.on.acknowledged(this.conversation);
    }
    if (this.views.has(message.id) || this.resubscribing) return;
    if (!this.makeRoomFor(message)) {
      this.resubscribe();
      return;
    }
    this.add(message, 0);
    this.on.composer();
  },

  "message.status"(frame) {
    const view = this.views.get(frame.message);
    if (!view) return;
    view.applyStatus(frame.status);
    this.on.changed(view, { streaming: false });
    this.on.composer();
  },

  "message.snapshot"(frame) {
    const view = this.views.get(frame.message);
    if (!view || view.role !== "assistant") return;
    view.applySnapshot(frame);
    this.on.changed(view, { streaming: false });
    this.on.composer();
  },

  "message.delta"(frame) {
    this.delta("text", frame);
  },

  "message.reasoning.delta"(frame) {
    this.delta("reasoning", frame);
  },

  "message.refusal.delta"(frame) {
    this.delta("refusal", frame);
  },

  "message.done"(frame) {
    if (frame.budget) this.on.budget(frame.budget);
    const view = this.views.get(frame.message);
    if (!view || view.role !== "assistant") return;
    view.apply(frame);
    this.on.changed(view, { streaming: false });
    this.on.composer();
    this.on.done(frame);
  },

  "conversation.updated"(frame) {
    this.on.updated(frame.conversation);
  },

  error(frame) {
    if (SESSION_ENDINGS.has(frame.code)) {
      // Shown only if this browser turns out to be signed out: a renewed session reconnects.
      this.sessionEnding = frame.message;
      return;
    }
    const pending = this.pendingSend;
    if (pending && frame.client_id && frame.client_id === pending.frame.client_id) {
      this.pendingSend = null;
      pending.onRefused(pending.frame);
    }
    this.on.error(frame);
    this.on.composer();
  },
};

export class ConversationState {
  /**
   * `conversation` is the page's ({id, title, model, ...}, or null for a new chat), `budget` the
   * page's figures; `createView(frame, seq)` makes a message's view; `send(frame)` puts a frame on
   * the socket and says whether it went; `listeners` as in LISTENERS; `now()` for tests.
   */
  constructor({ conversation = null, budget = null, createView, send, listeners = {}, now = Date.now }) {
    this.conversation = conversation;
    this.budget = budget;
    this.createView = createView;
    this.transport = send;
    this.on = { ...LISTENERS, ...listeners };
    this.now = now;
    this.views = new Map(); // message id -> view
    this.order = []; // views in conversation order
    // The chat.send, chat.regenerate or chat.edit not yet acknowledged by the server: re-sent after
    // a reconnect (its client_id makes that safe) and given back through its onRefused if the
    // server refuses it (the text to the composer or the editor, Regenerate or Retry to its answer).
    this.pendingSend = null;
    this.stopping = null; // the answer a chat.stop was sent for
    this.lastResync = -Infinity;
    // A chat.subscribe is on its way because another tab moved to a branch this one does not show;
    // its conversation.subscribed brings the messages created meanwhile.
    this.resubscribing = false;
    // Where keyboard focus goes once a chat.select's conversation.path has redrawn the messages.
    this.focusAfterPath = null;
    // Why the server ended the socket's session, until the socket knows whether to reconnect.
    this.sessionEnding = null;
    // A new chat with its own instructions is being made (POST /c/new/) before its first message.
    this.starting = false;
  }

  // --- what the page asks ----------------------------------------------------------------------

  /** The answer being written, if any. */
  activeAnswer() {
    for (let index = this.order.length - 1; index >= 0; index -= 1) {
      const view = this.order[index];
      if (view.role === "assistant" && UNFINISHED.has(view.status)) return view;
    }
    return null;
  }

  lastAnswer() {
    for (let index = this.order.length - 1; index >= 0; index -= 1) {
      const view = this.order[index];
      if (view.role === "assistant") return view;
    }
    return null;
  }

  last() {
    return this.order[this.order.length - 1];
  }

  /** No new answer can be asked for: one is being written or a send awaits its acknowledgement. */
  isLocked() {
    return this.activeAnswer() !== null || this.pendingSend !== null;
  }

  /** True when today's budget is spent: nothing more can be sent until it resets. */
  budgetSpent() {
    return Boolean(this.budget?.exhausted);
  }

  belongsHere(conversationId) {
    return this.conversation !== null && conversationId === this.conversation.id;
  }

  // --- what the page does ----------------------------------------------------------------------

  setConversation(conversation) {
    this.conversation = conversation;
    this.on.conversation(conversation);
  }

  /** A message of the page's own (at load): added at the end. */
  add(frame, seq = null) {
    const view = this.createView(frame, seq);
    this.views.set(view.id, view);
    this.order.push(view);
    this.on.added(view);
    return view;
  }

  /**
   * Sends a frame that starts an answer (chat.send, chat.regenerate, chat.edit) with a fresh
   * client_id; it stays pending until acknowledged. `onRefused(frame)` gives back what it was made
   * of if the server refuses it or the session ends. True when the socket took it; otherwise it
   * goes when the socket is back (`opened`).
   */
  send(frame, { onRefused = nothing } = {}) {
    frame.client_id = uuid4();
    this.pendingSend = { frame, onRefused };
    return this.transport(frame);
  }

  /** A chat.stop for the answer being written, once. */
  stop() {
    const answer = this.activeAnswer();
    if (!answer || this.stopping === answer.id) return;
    if (this.transport({ type: "chat.stop", message: answer.id })) this.stopping = answer.id;
    this.on.composer();
  }

  /** The pending send will not be answered (the session ended): give it back. */
  refusePending() {
    const pending = this.pendingSend;
    this.pendingSend = null;
    if (pending) pending.onRefused(pending.frame);
  }

  /** The socket is (re)connected: subscribe again and re-send what is pending. True if re-sent. */
  opened() {
    this.sessionEnding = null;
    if (this.conversation) this.transport({ type: "chat.subscribe", conversation: this.conversation.id });
    if (!this.pendingSend) return false;
    this.transport(this.pendingSend.frame);
    return true;
  }

  // --- frames from the server ------------------------------------------------------------------

  /** Applies one server frame; unknown types are ignored (docs/protocol.md). */
  apply(frame) {
    const handler = FRAME_HANDLERS[frame.type];
    if (handler) handler.call(this, frame);
  }

  /** Brings the list in line with the server's (after a (re)subscribe), keeping known views. */
  replaceMessages(frames) {
    const views = [];
    for (const frame of frames) {
      let view = this.views.get(frame.id);
      if (view) {
        view.apply(frame);
      } else {
        view = this.createView(frame, null);
      }
      views.push(view);
    }
    this.views = new Map(views.map((view) => [view.id, view]));
    this.order = views;
    this.on.replaced(views);
  }

  /**
   * Makes room for a new message: what is shown after its parent (an earlier version and what
   * followed it) leaves the page. False when the parent is not shown: this tab shows another branch.
   */
  makeRoomFor(message) {
    let keep = this.order.length;
    if (message.parent) {
      const parent = this.views.get(message.parent);
      if (!parent) return false;
      keep = this.order.indexOf(parent) + 1;
    } else if (message.role === "user") {
      keep = 0; // a first message, or a new version of it
    }
    for (const view of this.order.splice(keep)) {
      this.views.delete(view.id);
      this.on.removed(view);
    }
    return true;
  }

  delta(kind, frame) {
    const view = this.views.get(frame.message);
    if (!view || view.role !== "assistant") return;
    const wasQueued = view.status === "queued";
    const result = view.applyDelta(kind, frame);
    if (result === "applied") {
      this.on.changed(view, { streaming: true });
      if (wasQueued) this.on.composer();
    } else if (result === "gap") {
      this.resync();
    }
  }

  /** A delta went missing (it should not): ask for a fresh snapshot, at most once a second. */
  resync() {
    const now = this.now();
    if (!this.conversation || now - this.lastResync < RESYNC_INTERVAL_MS) return;
    this.lastResync = now;
    this.transport({ type: "chat.subscribe", conversation: this.conversation.id });
  }

  /** Another tab added to a branch this one does not show: show the conversation's current path. */
  resubscribe() {
    if (!this.conversation) return;
    this.resubscribing = true;
    // Sent now or, when the socket is down, by opened(); either way conversation.subscribed follows.
    this.transport({ type: "chat.subscribe", conversation: this.conversation.id });
  }
}
