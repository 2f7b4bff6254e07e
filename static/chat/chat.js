// The chat page's wiring (docs/protocol.md): the page's parts, the socket, and what each frame
// and each click does to them. The parts:
// - conversation.js: the conversation's state (views in order, the pending send, Stop, budget);
//   frames change it through `apply`, sends go through `send`; it never touches the document.
// - follow.js: render scheduling (one render per frame or streaming interval) and scroll-following.
// - composer.js: the message box, the model picker, Send and Stop, the error line.
// - attachments.js: the files for the next message (the tray), and a message's files.
// - instructions.js, budget.js, sidebar.js, share-dialog.js, shortcuts.js: the rest of the page.
// - context.js: the context gauge and the marker of the messages the model is not sent.
// - render.js: one message's view.
//
// Server data arrives through the `page-data` json_script element and websocket frames, never
// through markup built from strings.

import { ApiError, postForm, signedIn } from "./api.js";
import { AttachmentTray } from "./attachments.js";
import { BudgetDisplay, budgetSentence } from "./budget.js";
import { Composer } from "./composer.js";
import { ContextDisplay } from "./context.js";
import { takeOverComposer } from "./composer-takeover.js";
import { continueFrame } from "./continue.js";
import { ConversationState } from "./conversation.js";
import { Follower } from "./follow.js";
import { InstructionsPanel } from "./instructions.js";
import { copyCode, copyFrom, copyText } from "./markdown.js";
import { createView, incompleteReason } from "./render.js";
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
  connection: document.getElementById("connection"),
  connectionLabel: document.getElementById("connection-label"),
  announcer: document.getElementById("announcer"),
  sidebar: document.getElementById("sidebar"),
  sidebarToggle: document.getElementById("sidebar-toggle"),
  title: document.getElementById("conversation-title"),
  conversationSettings: document.getElementById("conversation-settings"),
  searchInput: document.getElementById("search-input"),
  shortcutsDialog: document.getElementById("shortcuts-dialog"),
  shortcutList: document.getElementById("shortcut-list"),
  showShortcuts: document.getElementById("show-shortcuts"),
};

const CONNECTION_LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
};

// --- helpers ---------------------------------------------------------------------------------

function announce(text) {
  dom.announcer.textContent = "";
  // A fresh text node after a tick is announced even when the words repeat.
  setTimeout(() => {
    dom.announcer.textContent = text;
  }, 50);
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

function showTitle(conversation) {
  document.title = `${conversation.title || "Conversation"} · Chat`;
  dom.title.textContent = conversation.title || "Conversation";
}

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  dom.sidebarToggle.setAttribute("aria-expanded", String(open));
}

function showShortcuts() {
  fillShortcutsDialog(dom.shortcutList);
  dom.shortcutsDialog.showModal();
}

// --- the page's parts ------------------------------------------------------------------------
// Their callbacks run on user actions and frames, once everything below is built.

const follower = new Follower({ scroller: dom.scroller, messages: dom.messages, jump: dom.jump });

const composer = new Composer({
  maxChars: page.max_message_chars,
  onSubmit: () => submit(),
  onStop: () => state.stop(),
  onInput: () => updateComposer(),
});

// Files for the next message: uploaded as they are added; Send waits for them.
const tray = new AttachmentTray({
  button: document.getElementById("attach-button"),
  input: document.getElementById("attach-input"),
  list: document.getElementById("attachment-tray"),
  status: document.getElementById("attachment-status"),
  dropHint: document.getElementById("drop-hint"),
  textarea: composer.input,
  onChange: () => updateComposer(),
  announce,
});

const instructions = new InstructionsPanel({ current: () => state.conversation, announce });

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

const shareDialog = new ShareDialog({ currentId: () => state.conversation?.id });

const budget = new BudgetDisplay({
  onChange(figures) {
    state.budget = figures;
    updateComposer();
  },
});

const state = new ConversationState({
  conversation: page.conversation,
  budget: page.budget,
  createView: (frame, seq) =>
    createView(frame, {
      onRegenerate: regenerate,
      onContinue: (view) => regenerate(view, continueFrame(view.id)),
      onSelect: selectVersion,
      onEdit: saveEdit,
      maxChars: page.max_message_chars,
      seq,
    }),
  send: (frame) => socket.send(frame),
  listeners: {
    conversation: showConversation,
    acknowledged(conversation) {
      // The most recently active conversation leads the unpinned ones, as it will after a reload.
      sidebar.markCurrent(conversation, { active: true });
      tray.release(); // the files taken for the message are the server's now
    },
    subscribed: (conversation) => instructions.show(conversation),
    added(view) {
      follower.follow();
      dom.messages.append(view.element);
      dom.emptyState.hidden = true;
      view.render();
    },
    removed(view) {
      view.element.remove();
      follower.forget(view);
    },
    replaced(views) {
      dom.messages.replaceChildren(...views.map((view) => view.element));
      dom.emptyState.hidden = views.length > 0;
      for (const view of views) follower.schedule(view);
    },
    changed: (view, options) => follower.schedule(view, options),
    composer: () => updateComposer(),
    budget: (figures) => budget.set(figures),
    done: (frame) => announce(doneAnnouncement(frame)),
    updated: (conversation) => sidebar.apply(conversation),
    error(frame) {
      composer.showError(frame.message || "Something went wrong.");
      // Spent elsewhere (another conversation, another tab): the composer follows the server's figures.
      if (frame.code === "quota_exceeded") budget.refresh();
    },
  },
});

const contextDisplay = new ContextDisplay({
  contexts: page.model_contexts,
  state,
  messages: dom.messages,
  model: composer.model,
  bar: composer.charCount.parentElement,
  before: composer.charCount,
});

const socket = new ChatSocket(socketUrl("/ws/chat/"), {
  onState(name) {
    dom.connection.dataset.state = name;
    dom.connectionLabel.textContent = CONNECTION_LABELS[name];
  },
  onOpen() {
    if (state.opened()) composer.showError("");
  },
  onFrame(frame) {
    state.apply(frame);
    contextDisplay.heard(frame);
  },
  isSignedIn: signedIn,
  onSignedOut: signedOut,
});

// --- the conversation on the page ------------------------------------------------------------

/** The page now shows `conversation` (a new chat got its first message). */
function showConversation(conversation) {
  const path = `/c/${conversation.id}/`;
  if (window.location.pathname !== path) window.history.replaceState(null, "", path);
  showTitle(conversation);
  sidebar.markCurrent(conversation);
  instructions.show(conversation);
  shareDialog.conversationChanged();
}

function updateComposer() {
  const answer = state.activeAnswer();
  const busy = answer !== null;
  composer.update({
    busy,
    stopping: busy && state.stopping === answer.id,
    spent: state.budgetSpent(),
    waiting: state.pendingSend !== null || state.starting || tray.busy,
    files: tray.ready.length,
  });
  updateMessageControls(busy || state.pendingSend !== null);
}

/** Regenerate on the last answer only; no editing or switching versions while busy. */
function updateMessageControls(locked) {
  const last = state.last();
  for (const view of state.order) view.setControls({ locked, last: view === last });
}

/** The socket's session ended and this browser has no other: say so; nothing typed is lost. */
function signedOut() {
  dom.connection.dataset.state = "signed-out";
  dom.connectionLabel.textContent = "Signed out";
  state.refusePending();
  composer.showError(state.sessionEnding || "Your session has ended: log in again.");
  updateComposer();
}

// --- what the user asks for ------------------------------------------------------------------

/** Sends a frame that starts an answer; `onRefused(frame)` gives back what it was made of. */
function sendAnswerFrame(frame, onRefused) {
  frame.model = composer.modelName;
  composer.showError("");
  follower.follow();
  // Not while the page's first connection is still being made (the header says "Connecting…"):
  // an Enter pressed as the page loaded (composer-early.js) would read as a failure.
  if (!state.send(frame, { onRefused }) && dom.connection.dataset.state !== "connecting") {
    composer.showError("Not connected. Your message will be sent as soon as the connection is back.");
  }
  updateComposer();
}

/** A refused text goes back into the composer, and its files into the tray. */
function giveBackText(frame, attachments) {
  composer.giveBack(frame.text);
  tray.giveBack(attachments);
}

/** `attachments`: the tray's files taken for this message (AttachmentTray.take). */
function sendText(text, attachments = []) {
  const frame = { type: "chat.send", conversation: state.conversation ? state.conversation.id : null, text };
  if (attachments.length) frame.attachments = attachments.map((item) => item.attachment.id);
  // The new message follows the answer this tab shows last, even if another tab moved elsewhere.
  const last = state.last();
  if (state.conversation && last?.role === "assistant") frame.parent = last.id;
  sendAnswerFrame(frame, (refused) => giveBackText(refused, attachments));
}

async function submit() {
  const text = composer.text;
  const empty = !text.trim() && !tray.ready.length; // files alone make a message
  if (empty || state.activeAnswer() !== null || state.pendingSend !== null || state.budgetSpent()) return;
  if (text.length > page.max_message_chars || state.starting || tray.busy) return;
  const attachments = tray.take();
  composer.clear();
  // The settings panel has done its part; the conversation is what matters now.
  dom.conversationSettings.open = false;
  if (state.conversation === null && instructions.value.trim() !== (page.default_instructions || "").trim()) {
    // Instructions of its own for a new chat: the conversation is made with them first, so that
    // the first answer follows them (a chat.send makes a new chat with the default ones).
    state.starting = true;
    updateComposer();
    try {
      const { conversation } = await postForm("/c/new/", {
        instructions: instructions.value,
        model: composer.model.value,
        first_message: text,
      });
      state.setConversation(conversation);
    } catch (error) {
      giveBackText({ text }, attachments);
      composer.showError(error instanceof ApiError ? error.message : "Could not start the conversation.");
      return;
    } finally {
      state.starting = false;
      updateComposer();
    }
  }
  sendText(text, attachments);
}

/**
 * Regenerate, or Retry on a failed answer: a new version of the answer; the old one is kept.
 * Continue (continue.js) is the same with its own `frame`: a version that goes on from this one.
 */
function regenerate(answerView, frame = { type: "chat.regenerate", message: answerView.id }) {
  if (state.isLocked() || state.budgetSpent()) {
    answerView.retried = false;
    answerView.updateActions();
    if (state.budgetSpent()) composer.showError(budgetSentence(state.budget));
    return;
  }
  sendAnswerFrame(frame, () => {
    // The answer is still in the conversation; its Retry, Regenerate or Continue button comes back.
    answerView.retried = false;
    answerView.dirty = true;
    follower.schedule(answerView);
  });
}

/**
 * "Save and send" in a user message's editor: a new version of it, answered afresh. `attachments`:
 * the ids it keeps, or undefined to keep all the edited message's.
 */
function saveEdit(userView, text, attachments) {
  if (state.budgetSpent()) {
    composer.showError(budgetSentence(state.budget)); // the editor stays open with the text
    return;
  }
  if (state.isLocked() || !text.trim() || text.length > page.max_message_chars) return;
  userView.stopEditing();
  const frame = { type: "chat.edit", message: userView.id, text };
  if (attachments) frame.attachments = attachments;
  sendAnswerFrame(frame, (refused) => {
    // The edited text goes back into the message's editor, if the message is still shown.
    if (state.views.get(userView.id) === userView) userView.startEditing(refused.text, refused.attachments);
  });
}

/** A version arrow: show the path through that version (the server remembers the choice). */
function selectVersion(view, messageId, direction) {
  if (!messageId || state.isLocked()) return;
  if (!socket.send({ type: "chat.select", message: messageId })) {
    composer.showError("Not connected. Try again once the connection is back.");
    return;
  }
  composer.showError("");
  state.focusAfterPath = { position: state.order.indexOf(view), direction };
}

/** Copies a whole message: an answer's Markdown source as the model wrote it, or what was sent. */
async function copyMessage(button) {
  const view = state.views.get(button.closest("article")?.dataset.id);
  if (!view) return;
  await copyFrom(button, view.text);
}

// --- page events -----------------------------------------------------------------------------

dom.messages.addEventListener("click", (event) => {
  const button = event.target.closest(".copy-button");
  if (button) copyCode(button);
  const messageButton = event.target.closest(".copy-answer-button, .copy-message-button");
  if (messageButton) copyMessage(messageButton);
});

// The sidebar on narrow screens: a menu button opens it, a click elsewhere closes it.
dom.sidebarToggle.addEventListener("click", () => {
  setSidebar(!document.body.classList.contains("sidebar-open"));
});

document.addEventListener("click", (event) => {
  if (!document.body.classList.contains("sidebar-open")) return;
  if (dom.sidebar.contains(event.target) || dom.sidebarToggle.contains(event.target)) return;
  setSidebar(false);
});

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
    if (composer.input.disabled) return false;
    composer.input.focus();
  },
  stop() {
    if (state.activeAnswer() === null) return false;
    state.stop();
  },
  copyLastAnswer() {
    const view = state.lastAnswer();
    if (!view?.text || view.unfinished) return false;
    copyText(view.text).then((copied) => announce(copied ? "Last answer copied." : "Could not copy the answer."));
  },
  showShortcuts,
});

dom.showShortcuts.addEventListener("click", showShortcuts);

// --- start -----------------------------------------------------------------------------------

// A new chat starts with the model chosen on the settings page.
composer.fillModels(page.models, page.model_labels, state.conversation?.model ?? page.default_model);
// An answer being written comes with the `seq` of its text (chat/views.py page_frame).
for (const message of page.messages) state.add(message, message.seq ?? null);
contextDisplay.load(page.messages);
budget.set(page.budget);
follower.scrollToBottom();
socket.start();
// An Enter pressed before this module ran (composer-early.js) sends now.
if (takeOverComposer(composer.form, composer.input)) submit();
// On touch screens focusing would pop up the keyboard over the conversation.
if (window.matchMedia("(pointer: fine)").matches) composer.input.focus();
