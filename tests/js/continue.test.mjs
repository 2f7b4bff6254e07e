// Continue's browser side (static/chat/continue.js) with the conversation state, without a
// browser. Run with `node --test tests/js/` (make test, make test-fast).

import assert from "node:assert/strict";
import { test } from "node:test";

import { continuable, continueFrame } from "../../static/chat/continue.js";
import { ConversationState } from "../../static/chat/conversation.js";

test("Continue is offered for an answer stopped short with text, as the server decides", () => {
  for (const status of ["incomplete", "cancelled", "interrupted"]) {
    assert.ok(continuable(status, "Some text"), status);
    assert.ok(!continuable(status, ""), `${status} without text`);
  }
  for (const status of ["completed", "failed", "queued", "streaming"]) {
    assert.ok(!continuable(status, "Some text"), status);
  }
});

test("a chat.continue is a pending send: acknowledged by its message.created, given back when refused", () => {
  const sent = [];
  const listeners = new Proxy({}, { get: () => () => {} });
  const state = new ConversationState({
    conversation: { id: "c1", title: "Story" },
    budget: null,
    createView: (frame) => ({ id: frame.id, role: frame.role, status: frame.status, apply() {}, applyStatus() {} }),
    send(frame) {
      sent.push(structuredClone(frame));
      return true;
    },
    listeners,
    now: () => 0,
  });
  state.add({ id: "u1", role: "user", status: "completed", text: "Tell", parent: null });
  state.add({ id: "a1", role: "assistant", status: "cancelled", text: "Once", parent: "u1" });

  let givenBack = 0;
  state.send(continueFrame("a1"), { onRefused: () => (givenBack += 1) });
  assert.equal(sent[0].type, "chat.continue");
  assert.equal(sent[0].message, "a1");
  assert.ok(sent[0].client_id, "a client id makes a re-sent continue harmless");
  assert.ok(state.isLocked(), "nothing else is sent meanwhile");
  state.apply({ type: "error", code: "busy", message: "Busy.", client_id: sent[0].client_id });
  assert.equal(givenBack, 1);
  assert.ok(!state.isLocked());

  state.send(continueFrame("a1"), { onRefused: () => (givenBack += 1) });
  state.apply({
    type: "message.created",
    conversation: "c1",
    message: { id: "a2", role: "assistant", status: "queued", text: "Once", parent: "u1" },
  });
  assert.equal(state.pendingSend, null);
  assert.deepEqual(
    state.order.map((view) => view.id),
    ["u1", "a2"],
  );
  assert.equal(givenBack, 1);
});
