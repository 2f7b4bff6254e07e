// The chat page's conversation state (static/chat/conversation.js) without a browser: frames in,
// listener calls and socket frames out. Run with `node --test tests/js/` (make test, make test-fast).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { ConversationState } from "../../static/chat/conversation.js";

/** A stand-in for render.js's views: records what was applied, answers applyDelta by `seq`. */
class FakeView {
  constructor(frame, seq) {
    this.id = frame.id;
    this.role = frame.role;
    this.status = frame.status;
    this.text = frame.text || "";
    this.seq = seq ?? 0;
    this.applied = [];
  }

  apply(frame) {
    this.applied.push(frame);
    this.status = frame.status;
    if (frame.text !== undefined) this.text = frame.text;
  }

  applyStatus(status) {
    this.status = status;
  }

  applySnapshot(frame) {
    this.applied.push(frame);
  }

  applyDelta(kind, frame) {
    if (frame.seq <= this.seq) return "stale";
    if (frame.seq !== this.seq + 1) return "gap";
    this.seq = frame.seq;
    if (kind === "text") this.text += frame.delta;
    if (this.status === "queued") this.status = "streaming";
    return "applied";
  }

  focusVersion(direction) {
    this.focused = direction;
  }
}

/** A state wired to a fake socket (`sent`, `connected`) and a log of listener calls. */
function harness({ conversation = { id: "c1", title: "Hello" }, budget = null, connected = true } = {}) {
  const calls = [];
  const socket = { sent: [], connected };
  const listeners = {};
  for (const name of [
    "conversation",
    "acknowledged",
    "subscribed",
    "added",
    "removed",
    "replaced",
    "changed",
    "composer",
    "budget",
    "done",
    "updated",
    "error",
  ]) {
    listeners[name] = (...args) => calls.push([name, ...args]);
  }
  let clock = 10_000;
  const state = new ConversationState({
    conversation,
    budget,
    createView: (frame, seq) => new FakeView(frame, seq),
    send(frame) {
      if (!socket.connected) return false;
      socket.sent.push(structuredClone(frame));
      return true;
    },
    listeners,
    now: () => clock,
  });
  const named = (name) => calls.filter((call) => call[0] === name);
  const tick = (ms) => {
    clock += ms;
  };
  return { state, socket, calls, named, tick };
}

const user = (id, parent = null) => ({ id, role: "user", status: "completed", text: "Hi", parent });
const answer = (id, parent, status = "queued") => ({ id, role: "assistant", status, text: "", parent });

function created(message, conversation = "c1") {
  return { type: "message.created", conversation, message };
}

describe("ConversationState.apply", () => {
  test("message.created adds a view at the end and tells the page", () => {
    const { state, named } = harness();
    state.apply(created(user("u1")));
    state.apply(created(answer("a1", "u1")));
    assert.deepEqual(
      state.order.map((view) => view.id),
      ["u1", "a1"],
    );
    assert.equal(state.views.get("a1").role, "assistant");
    assert.deepEqual(
      named("added").map(([, view]) => view.id),
      ["u1", "a1"],
    );
    assert.equal(state.activeAnswer().id, "a1");
    assert.ok(state.isLocked());
  });

  test("message.created for another conversation or a message already shown changes nothing", () => {
    const { state, named } = harness();
    state.apply(created(user("u1")));
    state.apply(created(user("u1")));
    state.apply(created(user("x1"), "other"));
    assert.deepEqual(
      state.order.map((view) => view.id),
      ["u1"],
    );
    assert.equal(named("added").length, 1);
  });

  test("a new version of a message replaces what followed its parent", () => {
    const { state, named } = harness();
    state.add(user("u1"));
    state.add(answer("a1", "u1", "completed"));
    state.add(user("u2", "a1"));
    state.add(answer("a2", "u2", "completed"));
    state.apply(created(answer("a1b", "u1")));
    assert.deepEqual(
      state.order.map((view) => view.id),
      ["u1", "a1b"],
    );
    assert.deepEqual(
      named("removed").map(([, view]) => view.id),
      ["a1", "u2", "a2"],
    );
    assert.equal(state.views.has("a2"), false);
  });

  test("a message under a parent this tab does not show asks for the current path once", () => {
    const { state, socket } = harness();
    state.add(user("u1"));
    state.apply(created(answer("a9", "elsewhere")));
    state.apply(created(answer("a10", "a9")));
    assert.equal(state.views.has("a9"), false);
    assert.equal(state.resubscribing, true);
    assert.deepEqual(socket.sent, [{ type: "chat.subscribe", conversation: "c1" }]);
  });

  test("message.delta is applied in order and rendered as streaming; a gap asks for a snapshot", () => {
    const { state, socket, named, tick } = harness();
    state.add(answer("a1", null), 0);
    state.apply({ type: "message.delta", message: "a1", seq: 1, delta: "Hel" });
    state.apply({ type: "message.delta", message: "a1", seq: 2, delta: "lo" });
    state.apply({ type: "message.delta", message: "a1", seq: 2, delta: "lo" }); // a repeat
    assert.equal(state.views.get("a1").text, "Hello");
    const changed = named("changed");
    assert.equal(changed.length, 2);
    assert.deepEqual(changed[0][2], { streaming: true });
    // Leaving "queued" turns Send into Stop: the composer hears of the first delta only.
    assert.equal(named("composer").length, 1);

    state.apply({ type: "message.delta", message: "a1", seq: 5, delta: "!" });
    state.apply({ type: "message.delta", message: "a1", seq: 6, delta: "!" });
    assert.deepEqual(socket.sent, [{ type: "chat.subscribe", conversation: "c1" }], "at most once a second");
    tick(1000);
    state.apply({ type: "message.delta", message: "a1", seq: 7, delta: "!" });
    assert.equal(socket.sent.length, 2);
  });

  test("deltas for an unknown message or for a user message are ignored", () => {
    const { state, calls } = harness();
    state.add(user("u1"));
    calls.length = 0;
    state.apply({ type: "message.delta", message: "u1", seq: 1, delta: "x" });
    state.apply({ type: "message.reasoning.delta", message: "nope", seq: 1, delta: "x" });
    assert.deepEqual(calls, []);
  });

  test("message.done applies the final frame, passes the budget on and announces", () => {
    const { state, named } = harness();
    state.add(answer("a1", null, "streaming"));
    const budget = { budget: 1000, used: 10, exhausted: false };
    const done = { type: "message.done", message: "a1", status: "completed", text: "All done", budget };
    state.apply(done);
    const view = state.views.get("a1");
    assert.equal(view.status, "completed");
    assert.equal(view.text, "All done");
    assert.deepEqual(named("budget"), [["budget", budget]]);
    assert.deepEqual(named("done"), [["done", done]]);
    assert.equal(state.activeAnswer(), null);
    assert.equal(state.isLocked(), false);
  });

  test("message.done's budget reaches the page even for a message this tab does not show", () => {
    const { state, named } = harness();
    state.apply({ type: "message.done", message: "gone", status: "completed", budget: { exhausted: true } });
    assert.equal(named("budget").length, 1);
    assert.equal(named("done").length, 0);
  });

  test("conversation.subscribed replaces the list, keeping known views, and clears Stop", () => {
    const { state, named } = harness();
    const kept = state.add(user("u1"));
    state.add(answer("a1", "u1", "streaming"));
    state.stopping = "a1";
    state.apply({
      type: "conversation.subscribed",
      conversation: { id: "c1", title: "Hello", instructions: "Be brief." },
      messages: [user("u1"), answer("a2", "u1", "completed")],
    });
    assert.equal(state.views.get("u1"), kept);
    assert.deepEqual(
      state.order.map((view) => view.id),
      ["u1", "a2"],
    );
    assert.equal(state.stopping, null);
    assert.equal(state.conversation.instructions, "Be brief.");
    assert.equal(named("subscribed").length, 1);
    assert.equal(named("replaced")[0][1].length, 2);
  });

  test("conversation.path moves focus to the version arrow that asked for it", () => {
    const { state } = harness();
    state.add(user("u1"));
    state.focusAfterPath = { position: 0, direction: "next" };
    state.apply({ type: "conversation.path", conversation: "c1", messages: [user("u1b")] });
    assert.equal(state.order[0].id, "u1b");
    assert.equal(state.order[0].focused, "next");
    assert.equal(state.focusAfterPath, null);
  });

  test("frames of unknown types are ignored", () => {
    const { state, calls } = harness();
    state.apply({ type: "message.tool_call.delta", message: "a1" });
    assert.deepEqual(calls, []);
  });
});

describe("ConversationState.send", () => {
  test("a send gets a client_id and stays pending until its message.created", () => {
    const { state, socket, named } = harness();
    const frame = { type: "chat.send", conversation: "c1", text: "Hi" };
    assert.equal(state.send(frame), true);
    assert.match(socket.sent[0].client_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(state.pendingSend.frame, frame);
    assert.ok(state.isLocked());
    state.apply(created(user("u1")));
    assert.equal(state.pendingSend, null);
    assert.deepEqual(named("acknowledged"), [["acknowledged", state.conversation]]);
  });

  test("a refused send is given back through onRefused, once", () => {
    const { state, named } = harness();
    const refused = [];
    const frame = { type: "chat.send", conversation: "c1", text: "Hi" };
    state.send(frame, { onRefused: (given) => refused.push(given) });
    // An error for another client_id (another tab's send) gives nothing back.
    state.apply({ type: "error", code: "busy", message: "Busy.", client_id: "someone-else" });
    assert.deepEqual(refused, []);
    state.apply({ type: "error", code: "busy", message: "Busy.", client_id: frame.client_id });
    state.apply({ type: "error", code: "busy", message: "Busy.", client_id: frame.client_id });
    assert.deepEqual(refused, [frame]);
    assert.equal(state.pendingSend, null);
    assert.equal(named("error").length, 3);
  });

  test("an error that ends the session is kept for later and gives nothing back yet", () => {
    const { state, named } = harness();
    const refused = [];
    state.send({ type: "chat.send", conversation: "c1", text: "Hi" }, { onRefused: (given) => refused.push(given) });
    state.apply({ type: "error", code: "password_changed", message: "Your password was changed." });
    assert.equal(state.sessionEnding, "Your password was changed.");
    assert.deepEqual(refused, []);
    assert.equal(named("error").length, 0);
    state.refusePending(); // the browser turned out to be signed out
    assert.equal(refused.length, 1);
    assert.equal(state.pendingSend, null);
  });

  test("a send made while disconnected goes with the resubscribe when the socket opens", () => {
    const { state, socket } = harness({ connected: false });
    const frame = { type: "chat.send", conversation: "c1", text: "Hi" };
    assert.equal(state.send(frame), false);
    socket.connected = true;
    state.sessionEnding = "Logged out.";
    assert.equal(state.opened(), true);
    assert.deepEqual(
      socket.sent.map((sent) => sent.type),
      ["chat.subscribe", "chat.send"],
    );
    assert.equal(socket.sent[1].client_id, frame.client_id);
    assert.equal(state.sessionEnding, null);
  });

  test("a send that the old socket took is sent again, with the same client_id, after a reconnect", () => {
    const { state, socket } = harness();
    const frame = { type: "chat.send", conversation: "c1", text: "Hi" };
    state.send(frame);
    assert.equal(state.opened(), true);
    assert.equal(socket.sent.length, 3);
    assert.equal(socket.sent[2].client_id, socket.sent[0].client_id);
    state.apply(created(user("u1")));
    assert.equal(state.opened(), false, "nothing pending after the acknowledgement");
  });

  test("a first message re-sent after its conversation.created was lost still opens the conversation", () => {
    const { state, named } = harness({ conversation: null });
    state.send({ type: "chat.send", conversation: null, text: "A question about something long enough" });
    state.apply({ type: "message.created", conversation: "new", message: user("u1") });
    assert.equal(state.conversation.id, "new");
    assert.equal(state.conversation.title, "A question about something long enough".slice(0, 60));
    assert.equal(named("conversation").length, 1);
    assert.equal(state.order.length, 1);
  });

  test("conversation.created opens the conversation only for this tab's own first message", () => {
    const { state, named } = harness({ conversation: null });
    state.apply({ type: "conversation.created", conversation: { id: "other" } });
    assert.equal(state.conversation, null);
    state.send({ type: "chat.send", conversation: null, text: "Hi" });
    state.apply({ type: "conversation.created", conversation: { id: "mine", title: "Hi" } });
    assert.equal(state.conversation.id, "mine");
    assert.equal(named("conversation").length, 1);
  });

  test("Stop is sent once for the answer being written, and again after a resubscribe", () => {
    const { state, socket } = harness();
    state.add(answer("a1", null, "streaming"));
    state.stop();
    state.stop();
    assert.deepEqual(socket.sent, [{ type: "chat.stop", message: "a1" }]);
    assert.equal(state.stopping, "a1");
    state.apply({
      type: "conversation.subscribed",
      conversation: { id: "c1" },
      messages: [answer("a1", null, "streaming")],
    });
    state.stop();
    assert.equal(socket.sent.filter((sent) => sent.type === "chat.stop").length, 2);
  });

  test("the budget's figures say whether anything can be sent", () => {
    const { state } = harness({ budget: { budget: 100, used: 100, exhausted: true } });
    assert.equal(state.budgetSpent(), true);
    state.budget = { budget: 100, used: 0, exhausted: false };
    assert.equal(state.budgetSpent(), false);
  });
});
