// The chat page: the conversation, the composer and the websocket (docs/protocol.md).
//
// Server data arrives through the `page-data` json_script element and websocket frames, never
// through markup built from strings. Frames update message views and mark them dirty; one
// requestAnimationFrame callback renders whatever changed, so a burst of deltas costs one render.

import { ApiError, getJson, postForm, signedIn } from "./api.js";
import { AttachmentTray } from "./attachments.js";
import { copyCode, copyText } from "./markdown.js";
import { createView, incompleteReason, UNFINISHED } from "./render.js";
import { ShareDialog } from "./share-dialog.js";
import { fillShortcutsDialog, installShortcuts } from "./shortcuts.js";
import { Sidebar } from "./sidebar.js";
import { ChatSocket, socketUrl } from "./socket.js";

const page = JSON.parse(document.getElementById("page-data").textContent);

const dom = {
  scroller: document.getElementById("scroller"),
  messages: document.getElementById("messages"),
  emptyState: document.getElementById("empty-state"),
  jump: document.getElementById("jump"),
  composer: document.getElementById("composer"),
  input: document.getElementById("message-input"),
  model: document.getElementById("model"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  charCount: document.getElementById("char-count"),
  composerError: document.getElementById("composer-error"),
  connection: document.getElementById("connection"),
  connectionLabel: document.getElementById("connection-label"),
  announcer: document.getElementById("announcer"),
  sidebar: document.getElementById("sidebar"),
  sidebarToggle: document.getElementById("sidebar-toggle"),
  conversationList: document.getElementById("conversation-list"),
  title: document.getElementById("conversation-title"),
  instructions: document.getElementById("instructions"),
  instructionsHint: document.getElementById("instructions-hint"),
  saveInstructions: document.getElementById("save-instructions"),
  conversationSettings: document.getElementById("conversation-settings"),
  budgetNotice: document.getElementById("budget-notice"),
  budgetLine: document.getElementById("budget"), // only when the account has a budget
  searchInput: document.getElementById("search-input"),
  shortcutsDialog: document.getElementById("shortcuts-dialog"),
  shortcutList: document.getElementById("shortcut-list"),
  showShortcuts: document.getElementById("show-shortcuts"),
};

const state = {
  conversation: page.conversation, // {id, title, model, ...} or null for a new chat
  views: new Map(), // message id -> view
  order: [], // views in conversation order
  // The chat.send, chat.regenerate or chat.edit not yet acknowledged by the server: re-sent after
  // a reconnect (its client_id makes that safe) and given back if the server refuses it (the text
  // to the composer or the editor, the Regenerate or Retry button to its answer).
  pendingSend: null,
  stopping: null, // the answer a chat.stop was sent for
  lastResync: 0,
  // A chat.subscribe is on its way because another tab moved to a branch this one does not show;
  // its conversation.subscribed brings the messages created meanwhile.
  resubscribing: false,
  // Where keyboard focus goes once a chat.select's conversation.path has redrawn the messages.
  focusAfterPath: null,
  // Today's tokens against the account's daily budget: from the page, then from each message.done.
  budget: page.budget,
  // Why the server ended the socket's session, until the socket knows whether to reconnect.
  sessionEnding: null,
  // A new chat with its own instructions is being made (POST /c/new/) before its first message.
  starting: false,
};

// --- helpers ---------------------------------------------------------------------------------

function uuid4() {
  if (window.crypto.randomUUID) return window.crypto.randomUUID();
  // Plain-HTTP deployments are not a secure context and lack randomUUID.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function announce(text) {
  dom.announcer.textContent = "";
  // A fresh text node after a tick is announced even when the words repeat.
  setTimeout(() => {
    dom.announcer.textContent = text;
  }, 50);
}

function showError(message) {
  dom.composerError.textContent = message;
  dom.composerError.hidden = !message;
}

// --- rendering -------------------------------------------------------------------------------

// While an answer streams, its deltas are rendered at most this often. Each render costs the
// browser a frame of style, layout and paint (and a scroll) however little changed: rendering
// every delta frame (~30 a second from a fast model) cost about three times as much main thread
// as rendering at this pace (docs/benchmarks.md). Anything else renders on the next frame.
const STREAMING_RENDER_INTERVAL = 100;

const dirty = new Set();
let frameRequested = false;
let renderTimer = null;
let lastRender = -Infinity;
let followBottom = true;

/** Renders `view` on the next frame or, for a delta (`streaming`), once the interval is over. */
function scheduleRender(view, { streaming = false } = {}) {
  dirty.add(view);
  if (frameRequested) return;
  if (!streaming || document.hidden) {
    // A hidden tab gets no animation frames: it renders once, when it is shown again.
    frameRequested = true;
    requestAnimationFrame(renderDirty);
  } else if (renderTimer === null) {
    // A task rather than a frame callback: the scroll below then has its scroll event dispatched
    // in the frame that paints the render, where from a frame callback it would need one more.
    const wait = Math.max(0, lastRender + STREAMING_RENDER_INTERVAL - performance.now());
    renderTimer = setTimeout(renderDirty, wait);
  }
}

function renderDirty() {
  frameRequested = false;
  clearTimeout(renderTimer);
  renderTimer = null;
  if (dirty.size === 0) return;
  lastRender = performance.now();
  for (const view of dirty) view.render();
  dirty.clear();
  // Sizes are read once, after all the writes: one layout, which the frame then reuses. The
  // ResizeObserver below follows growth that comes from anywhere else (a window resize, images).
  if (followBottom) scrollToBottom();
}

function isAtBottom() {
  const { scrollTop, scrollHeight, clientHeight } = dom.scroller;
  return scrollHeight - scrollTop - clientHeight < 48;
}

function scrollToBottom() {
  dom.scroller.scrollTop = dom.scroller.scrollHeight;
}

function updateJumpButton() {
  const hidden = followBottom || isAtBottom();
  if (dom.jump.hidden !== hidden) dom.jump.hidden = hidden;
}

dom.scroller.addEventListener("scroll", () => {
  followBottom = isAtBottom();
  updateJumpButton();
});

// Follows the bottom when the messages grow or the room for them changes (the composer growing,
// the window resizing). Resize observations are delivered after layout, so reading sizes here
// costs no extra layout; while following, renderDirty() has usually scrolled already.
const followLatest = new ResizeObserver(() => {
  if (followBottom) scrollToBottom();
  updateJumpButton();
});
followLatest.observe(dom.scroller);
followLatest.observe(dom.messages);

dom.jump.addEventListener("click", () => {
  // Not a smooth scroll: its scroll events would read as the reader scrolling, and the answer
  // can grow past the target before it lands.
  followBottom = true;
  scrollToBottom();
  dom.jump.hidden = true;
});

// --- the conversation ------------------------------------------------------------------------

function viewOptions(seq = null) {
  return {
    onRegenerate: regenerate,
    onSelect: selectVersion,
    onEdit: saveEdit,
    maxChars: page.max_message_chars,
    seq,
  };
}

function addView(frame, seq = null) {
  const view = createView(frame, viewOptions(seq));
  state.views.set(view.id, view);
  state.order.push(view);
  dom.messages.append(view.element);
  dom.emptyState.hidden = true;
  view.render();
  return view;
}

/** Brings the list in line with the server's (after a (re)subscribe), keeping known views. */
function replaceMessages(frames) {
  const views = [];
  for (const frame of frames) {
    let view = state.views.get(frame.id);
    if (view) {
      view.apply(frame);
    } else {
      view = createView(frame, viewOptions());
    }
    views.push(view);
  }
  state.views = new Map(views.map((view) => [view.id, view]));
  state.order = views;
  dom.messages.replaceChildren(...views.map((view) => view.element));
  dom.emptyState.hidden = views.length > 0;
  for (const view of views) scheduleRender(view);
}

/**
 * Makes room for a new message: what is shown after its parent (an earlier version and what
 * followed it) leaves the page. False when the parent is not shown: this tab shows another branch.
 */
function makeRoomFor(message) {
  let keep = state.order.length;
  if (message.parent) {
    const parent = state.views.get(message.parent);
    if (!parent) return false;
    keep = state.order.indexOf(parent) + 1;
  } else if (message.role === "user") {
    keep = 0; // a first message, or a new version of it
  }
  for (const view of state.order.splice(keep)) {
    view.element.remove();
    state.views.delete(view.id);
    dirty.delete(view);
  }
  return true;
}

function activeAnswer() {
  for (let index = state.order.length - 1; index >= 0; index -= 1) {
    const view = state.order[index];
    if (view.role === "assistant" && UNFINISHED.has(view.status)) return view;
  }
  return null;
}

function setConversation(conversation) {
  state.conversation = conversation;
  const path = `/c/${conversation.id}/`;
  if (window.location.pathname !== path) window.history.replaceState(null, "", path);
  showTitle(conversation);
  markCurrentInSidebar(conversation);
  showInstructions(conversation);
  shareDialog.conversationChanged();
}

function showTitle(conversation) {
  document.title = `${conversation.title || "Conversation"} · Chat`;
  dom.title.textContent = conversation.title || "Conversation";
}

function markCurrentInSidebar(conversation, options) {
  // The most recently active conversation leads the unpinned ones, as it will after a reload.
  sidebar.markCurrent(conversation, options);
}

// --- frames from the server ------------------------------------------------------------------

function belongsHere(conversationId) {
  return state.conversation !== null && conversationId === state.conversation.id;
}

// Error codes telling why the socket's session ended (docs/protocol.md); the server closes the
// socket next, and the socket asks whether this browser is still signed in (socket.js).
const SESSION_ENDINGS = new Set([
  "logged_out",
  "session_expired",
  "password_changed",
  "account_disabled",
  "account_deleted",
]);

const handlers = {
  "conversation.created"(frame) {
    if (state.conversation === null && state.pendingSend?.frame.conversation === null) {
      setConversation(frame.conversation);
    }
  },

  "conversation.subscribed"(frame) {
    if (!belongsHere(frame.conversation.id)) return;
    state.conversation = frame.conversation;
    showInstructions(frame.conversation);
    state.stopping = null; // a Stop lost with the old socket can be pressed again
    state.resubscribing = false;
    replaceMessages(frame.messages);
    updateComposer();
  },

  "conversation.path"(frame) {
    if (!belongsHere(frame.conversation)) return;
    replaceMessages(frame.messages);
    updateComposer();
    const focus = state.focusAfterPath;
    state.focusAfterPath = null;
    if (focus) state.order[focus.position]?.focusVersion(focus.direction);
  },

  "message.created"(frame) {
    if (state.conversation === null && state.pendingSend?.frame.conversation === null) {
      // A re-sent first message whose conversation.created was lost with the old socket.
      setConversation({ id: frame.conversation, title: state.pendingSend.frame.text.slice(0, 60) });
    }
    if (!belongsHere(frame.conversation)) return;
    const message = frame.message;
    if (state.pendingSend !== null) {
      tray.release(state.pendingSend.attachments);
      // Acknowledged. Another tab's send into this conversation while ours is unacknowledged
      // would make the server refuse ours as busy, with an error naming our client_id.
      state.pendingSend = null;
      markCurrentInSidebar(state.conversation, { active: true });
    }
    if (state.views.has(message.id) || state.resubscribing) return;
    if (!makeRoomFor(message)) {
      resubscribe();
      return;
    }
    followBottom = true;
    addView(message, 0);
    updateComposer();
  },

  "message.status"(frame) {
    const view = state.views.get(frame.message);
    if (!view) return;
    view.applyStatus(frame.status);
    scheduleRender(view);
    updateComposer();
  },

  "message.snapshot"(frame) {
    const view = state.views.get(frame.message);
    if (!view || view.role !== "assistant") return;
    view.applySnapshot(frame);
    scheduleRender(view);
    updateComposer();
  },

  "message.delta"(frame) {
    delta("text", frame);
  },

  "message.reasoning.delta"(frame) {
    delta("reasoning", frame);
  },

  "message.refusal.delta"(frame) {
    delta("refusal", frame);
  },

  "message.done"(frame) {
    if (frame.budget) setBudget(frame.budget);
    const view = state.views.get(frame.message);
    if (!view || view.role !== "assistant") return;
    view.apply(frame);
    scheduleRender(view);
    updateComposer();
    announce(doneAnnouncement(frame));
  },

  "conversation.updated"(frame) {
    // Pinned, archived or restored, in this tab or another.
    sidebar.apply(frame.conversation);
  },

  error(frame) {
    if (SESSION_ENDINGS.has(frame.code)) {
      // Shown only if this browser turns out to be signed out: a renewed session reconnects.
      state.sessionEnding = frame.message;
      return;
    }
    const pending = state.pendingSend;
    if (pending && frame.client_id && frame.client_id === pending.frame.client_id) {
      state.pendingSend = null;
      giveBack(pending);
    }
    showError(frame.message || "Something went wrong.");
    // Spent elsewhere (another conversation, another tab): the composer follows the server's figures.
    if (frame.code === "quota_exceeded") refreshBudget();
    updateComposer();
  },
};

/** A refused chat.send, chat.regenerate or chat.edit: what it was made of goes back. */
function giveBack(pending) {
  if (pending.regenerating) {
    // The answer is still in the conversation; its Retry or Regenerate button comes back.
    pending.regenerating.retried = false;
    pending.regenerating.dirty = true;
    scheduleRender(pending.regenerating);
  } else if (pending.editing) {
    // The edited text goes back into the message's editor, if the message is still shown.
    if (state.views.get(pending.editing.id) === pending.editing) {
      pending.editing.startEditing(pending.frame.text, pending.frame.attachments);
    }
  } else {
    // Nothing typed is lost: the refused text goes back into the composer.
    const current = dom.input.value;
    dom.input.value = current.trim() ? `${pending.frame.text}\n\n${current}` : pending.frame.text;
    resizeInput();
    tray.giveBack(pending.attachments); // and so are its files
  }
}

/** The socket's session ended and this browser has no other: say so; nothing typed is lost. */
function signedOut() {
  dom.connection.dataset.state = "signed-out";
  dom.connectionLabel.textContent = "Signed out";
  const pending = state.pendingSend;
  state.pendingSend = null;
  if (pending) giveBack(pending);
  showError(state.sessionEnding || "Your session has ended: log in again.");
  updateComposer();
}

function delta(kind, frame) {
  const view = state.views.get(frame.message);
  if (!view || view.role !== "assistant") return;
  const wasQueued = view.status === "queued";
  const result = view.applyDelta(kind, frame);
  if (result === "applied") {
    scheduleRender(view, { streaming: true });
    if (wasQueued) updateComposer();
  } else if (result === "gap") {
    resync();
  }
}

function doneAnnouncement(frame) {
  switch (frame.status) {
    case "completed":
      return "Answer finished.";
    case "incomplete":
      return `Answer incomplete: ${incompleteReason(frame.incomplete_reason) || "stopped early"}.`;
    case "failed":
      return `Answer failed: ${frame.error?.message || "unknown error"}`;
    case "cancelled":
      return "Answer stopped.";
    default:
      return `Answer ${frame.status}.`;
  }
}

/** A delta went missing (it should not): ask for a fresh snapshot, at most once a second. */
function resync() {
  const now = Date.now();
  if (!state.conversation || now - state.lastResync < 1000) return;
  state.lastResync = now;
  socket.send({ type: "chat.subscribe", conversation: state.conversation.id });
}

/** Another tab added to a branch this one does not show: show the conversation's current path. */
function resubscribe() {
  if (!state.conversation) return;
  state.resubscribing = true;
  // Sent now or, when the socket is down, by onOpen; either way conversation.subscribed follows.
  socket.send({ type: "chat.subscribe", conversation: state.conversation.id });
}

// --- the daily budget ------------------------------------------------------------------------

let budgetReset = null;

/** True when today's budget is spent: nothing more can be sent until it resets. */
function budgetSpent() {
  return Boolean(state.budget?.exhausted);
}

function budgetSentence(budget) {
  return `You have used today's budget of ${budget.budget} tokens; it resets at midnight (${budget.zone}).`;
}

/** Shows `budget` (the server's figures) and, once it is spent, disables the composer until it resets. */
function setBudget(budget) {
  state.budget = budget;
  clearTimeout(budgetReset);
  if (budget.exhausted) {
    // setTimeout's longest wait is about 24.8 days; a day is far below it.
    const wait = Math.min(Math.max(0, new Date(budget.resets_at) - Date.now()) + 1000, 2 ** 31 - 1);
    budgetReset = setTimeout(() => setBudget({ ...budget, used: 0, reserved: 0, exhausted: false }), wait);
  }
  showBudget();
  updateComposer();
}

/**
 * Asks the server for today's figures. This tab hears the end of its own conversation's answers
 * only; answers elsewhere spend the same budget, so it asks when shown again and when a send is
 * refused for the budget.
 */
async function refreshBudget() {
  try {
    const { budget } = await getJson("/budget/");
    setBudget(budget);
  } catch {
    // Offline or signed out: the socket says so; the figures stay as they were.
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") refreshBudget();
});
window.addEventListener("focus", refreshBudget);

function showBudget() {
  const budget = state.budget;
  if (dom.budgetLine && budget?.budget) {
    dom.budgetLine.textContent = `Today: ${budget.used} of ${budget.budget} tokens used.`;
  }
  const spent = budgetSpent();
  const sentence = spent ? budgetSentence(budget) : "";
  if (dom.budgetNotice.textContent !== sentence) dom.budgetNotice.textContent = sentence;
  dom.budgetNotice.hidden = !spent;
}

// --- the composer ----------------------------------------------------------------------------

function fillModels() {
  // A new chat starts with the model chosen on the settings page.
  const preferred = state.conversation?.model ?? page.default_model;
  for (const name of page.models) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = page.model_labels?.[name] || name;
    dom.model.append(option);
  }
  if (preferred && page.models.includes(preferred)) dom.model.value = preferred;
  showModelTitle();
  // With one model the picker still names it (e.g. "Local model: SmolLM2-135M, offline").
  dom.model.disabled = page.models.length < 2;
}

/** The chosen model's whole name, for a picker too narrow to show it (a phone). */
function showModelTitle() {
  dom.model.title = dom.model.selectedOptions[0]?.textContent || "";
}

dom.model.addEventListener("change", showModelTitle);

// Files for the next message (attachments.js): uploaded as they are added; Send waits for them.
const tray = new AttachmentTray({
  button: document.getElementById("attach-button"),
  input: document.getElementById("attach-input"),
  list: document.getElementById("attachment-tray"),
  status: document.getElementById("attachment-status"),
  dropHint: document.getElementById("drop-hint"),
  textarea: dom.input,
  onChange: updateComposer,
});

function resizeInput() {
  dom.input.style.height = "auto";
  dom.input.style.height = `${Math.min(dom.input.scrollHeight, 240)}px`;
}

function updateComposer() {
  const answer = activeAnswer();
  const busy = answer !== null;
  const length = dom.input.value.length;
  const tooLong = length > page.max_message_chars;
  const spent = budgetSpent();
  dom.send.hidden = busy;
  dom.stop.hidden = !busy;
  dom.stop.disabled = busy && state.stopping === answer.id;
  // What is typed stays in the disabled box: it can be sent once the budget resets.
  dom.input.disabled = spent;
  dom.send.disabled =
    spent || !dom.input.value.trim() || tooLong || state.pendingSend !== null || state.starting || tray.busy;
  dom.charCount.hidden = length < page.max_message_chars * 0.9;
  dom.charCount.textContent = `${length.toLocaleString()} / ${page.max_message_chars.toLocaleString()}`;
  dom.charCount.classList.toggle("is-over", tooLong);
  updateMessageControls(busy || state.pendingSend !== null);
}

/** Regenerate on the last answer only; no editing or switching versions while busy. */
function updateMessageControls(locked) {
  const last = state.order[state.order.length - 1];
  for (const view of state.order) view.setControls({ locked, last: view === last });
}

/** Sends a frame that starts an answer; `origin` says what to give back if it is refused. */
function sendAnswerFrame(frame, origin = {}) {
  frame.client_id = uuid4();
  frame.model = dom.model.value || undefined;
  state.pendingSend = { frame, ...origin };
  showError("");
  followBottom = true;
  if (!socket.send(frame)) {
    showError("Not connected. Your message will be sent as soon as the connection is back.");
  }
  updateComposer();
}

/** `attachments`: the tray's files taken for this message, given back with the text if refused. */
function sendText(text, attachments = []) {
  const frame = { type: "chat.send", conversation: state.conversation ? state.conversation.id : null, text };
  if (attachments.length) frame.attachments = attachments.map((item) => item.attachment.id);
  // The new message follows the answer this tab shows last, even if another tab moved elsewhere.
  const last = state.order[state.order.length - 1];
  if (state.conversation && last?.role === "assistant") frame.parent = last.id;
  sendAnswerFrame(frame, { attachments });
}

function isLocked() {
  return activeAnswer() !== null || state.pendingSend !== null;
}

async function submit() {
  const text = dom.input.value;
  if (!text.trim() || activeAnswer() !== null || state.pendingSend !== null || budgetSpent()) return;
  if (text.length > page.max_message_chars || state.starting || tray.busy) return;
  const attachments = tray.take();
  dom.input.value = "";
  resizeInput();
  // The settings panel has done its part; the conversation is what matters now.
  dom.conversationSettings.open = false;
  if (state.conversation === null && dom.instructions.value.trim() !== (page.default_instructions || "").trim()) {
    // Instructions of its own for a new chat: the conversation is made with them first, so that
    // the first answer follows them (a chat.send makes a new chat with the default ones).
    state.starting = true;
    updateComposer();
    try {
      const { conversation } = await postForm("/c/new/", {
        instructions: dom.instructions.value,
        model: dom.model.value,
        first_message: text,
      });
      setConversation(conversation);
    } catch (error) {
      giveBack({ frame: { text }, attachments });
      showError(error instanceof ApiError ? error.message : "Could not start the conversation.");
      return;
    } finally {
      state.starting = false;
      updateComposer();
    }
  }
  sendText(text, attachments);
}

function stop() {
  const answer = activeAnswer();
  if (!answer || state.stopping === answer.id) return;
  if (socket.send({ type: "chat.stop", message: answer.id })) state.stopping = answer.id;
  updateComposer();
}

/** Regenerate, or Retry on a failed answer: a new version of the answer; the old one is kept. */
function regenerate(answerView) {
  if (isLocked() || budgetSpent()) {
    answerView.retried = false;
    answerView.updateActions();
    if (budgetSpent()) showError(budgetSentence(state.budget));
    return;
  }
  sendAnswerFrame({ type: "chat.regenerate", message: answerView.id }, { regenerating: answerView });
}

/**
 * "Save and send" in a user message's editor: a new version of it, answered afresh. `attachments`:
 * the ids it keeps, or undefined to keep all the edited message's.
 */
function saveEdit(userView, text, attachments) {
  if (budgetSpent()) {
    showError(budgetSentence(state.budget)); // the editor stays open with the text
    return;
  }
  if (isLocked() || !text.trim() || text.length > page.max_message_chars) return;
  userView.stopEditing();
  const frame = { type: "chat.edit", message: userView.id, text };
  if (attachments) frame.attachments = attachments;
  sendAnswerFrame(frame, { editing: userView });
}

/** A version arrow: show the path through that version (the server remembers the choice). */
function selectVersion(view, messageId, direction) {
  if (!messageId || isLocked()) return;
  if (!socket.send({ type: "chat.select", message: messageId })) {
    showError("Not connected. Try again once the connection is back.");
    return;
  }
  showError("");
  state.focusAfterPath = { position: state.order.indexOf(view), direction };
}

dom.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

dom.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});

dom.input.addEventListener("input", () => {
  resizeInput();
  updateComposer();
});

dom.stop.addEventListener("click", stop);

dom.messages.addEventListener("click", (event) => {
  const button = event.target.closest(".copy-button");
  if (button) copyCode(button);
  const messageButton = event.target.closest(".copy-answer-button, .copy-message-button");
  if (messageButton) copyMessage(messageButton);
});

/** Copies a whole message: an answer's Markdown source as the model wrote it, or what was sent. */
async function copyMessage(button) {
  const view = state.views.get(button.closest("article")?.dataset.id);
  if (!view) return;
  const copied = await copyText(view.text);
  button.textContent = copied ? "Copied" : "Copy failed";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

// --- conversation settings -------------------------------------------------------------------

let instructionsSaved = dom.instructions.value;

/** Fills the Instructions field from the server, unless the user is editing it. */
function showInstructions(conversation) {
  dom.saveInstructions.hidden = false;
  dom.instructionsHint.textContent = "Sent to the model with every answer in this conversation.";
  const server = conversation.instructions ?? instructionsSaved;
  if (dom.instructions.value === instructionsSaved) dom.instructions.value = server;
  instructionsSaved = server;
  updateSaveInstructions();
}

/** Save is offered only for a change: a button that would save nothing is disabled. */
function updateSaveInstructions() {
  dom.saveInstructions.disabled = state.conversation === null || dom.instructions.value === instructionsSaved;
}

dom.instructions.addEventListener("input", updateSaveInstructions);

dom.saveInstructions.addEventListener("click", async () => {
  if (!state.conversation) return;
  dom.saveInstructions.disabled = true;
  try {
    const { conversation } = await postForm(`/c/${state.conversation.id}/instructions/`, {
      instructions: dom.instructions.value,
    });
    state.conversation.instructions = conversation.instructions;
    instructionsSaved = conversation.instructions;
    dom.instructions.value = conversation.instructions;
    dom.instructionsHint.textContent = "Saved. The next answer follows these instructions.";
    announce("Instructions saved.");
  } catch (error) {
    dom.instructionsHint.textContent = error instanceof ApiError ? error.message : "Could not save.";
  } finally {
    updateSaveInstructions();
  }
});

// --- the sidebar's list ----------------------------------------------------------------------

const sidebar = new Sidebar({
  currentId: () => state.conversation?.id,
  onRenamed(conversation) {
    state.conversation.title = conversation.title;
    showTitle(conversation);
  },
  onDeletedCurrent(next) {
    // The conversation is gone: start afresh on a new chat, as the New chat link would.
    window.location.assign(next);
  },
  announce,
});

// --- sharing ---------------------------------------------------------------------------------

const shareDialog = new ShareDialog({ currentId: () => state.conversation?.id });

// --- sidebar on narrow screens ---------------------------------------------------------------

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  dom.sidebarToggle.setAttribute("aria-expanded", String(open));
}

dom.sidebarToggle.addEventListener("click", () => {
  setSidebar(!document.body.classList.contains("sidebar-open"));
});

document.addEventListener("click", (event) => {
  if (!document.body.classList.contains("sidebar-open")) return;
  if (dom.sidebar.contains(event.target) || dom.sidebarToggle.contains(event.target)) return;
  setSidebar(false);
});

// --- keyboard shortcuts (shortcuts.js) -------------------------------------------------------

function lastAnswer() {
  for (let index = state.order.length - 1; index >= 0; index -= 1) {
    const view = state.order[index];
    if (view.role === "assistant") return view;
  }
  return null;
}

function showShortcuts() {
  fillShortcutsDialog(dom.shortcutList);
  dom.shortcutsDialog.showModal();
}

installShortcuts({
  newChat() {
    window.location.assign("/");
  },
  search() {
    // On a phone the list is behind the menu button: open it first, so focus lands on something seen.
    if (window.getComputedStyle(dom.sidebarToggle).display !== "none") setSidebar(true);
    dom.searchInput.focus();
    dom.searchInput.select();
  },
  focusComposer() {
    if (dom.input.disabled) return false;
    dom.input.focus();
  },
  stop() {
    if (activeAnswer() === null) return false;
    stop();
  },
  copyLastAnswer() {
    const view = lastAnswer();
    if (!view?.text || view.unfinished) return false;
    copyText(view.text).then((copied) => announce(copied ? "Last answer copied." : "Could not copy the answer."));
  },
  showShortcuts,
});

dom.showShortcuts.addEventListener("click", showShortcuts);

// --- the socket ------------------------------------------------------------------------------

const CONNECTION_LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
};

const socket = new ChatSocket(socketUrl("/ws/chat/"), {
  onState(name) {
    dom.connection.dataset.state = name;
    dom.connectionLabel.textContent = CONNECTION_LABELS[name];
  },
  onOpen() {
    state.sessionEnding = null;
    if (state.conversation) {
      socket.send({ type: "chat.subscribe", conversation: state.conversation.id });
    }
    if (state.pendingSend) {
      socket.send(state.pendingSend.frame);
      showError("");
    }
  },
  onFrame(frame) {
    const handler = handlers[frame.type];
    if (handler) handler(frame);
  },
  isSignedIn: signedIn,
  onSignedOut: signedOut,
});

// --- start -----------------------------------------------------------------------------------

fillModels();
// An answer being written comes with the `seq` of its text (chat/views.py page_frame).
for (const message of page.messages) addView(message, message.seq ?? null);
setBudget(page.budget);
scrollToBottom();
socket.start();
// On touch screens focusing would pop up the keyboard over the conversation.
if (window.matchMedia("(pointer: fine)").matches) dom.input.focus();
