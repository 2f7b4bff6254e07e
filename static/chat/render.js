// One message of the conversation as an <article>, kept in step with the websocket frames.
//
// Frames only change a view's state and mark it dirty; `render()` (called at most once per
// animation frame by follow.js) brings the DOM up to date. Text from the server reaches the page
// through textContent or, for Markdown, through markdown.js's sanitizer.

import { ContinueButton } from "./continue.js";
import { EditorAttachments, messageAttachments } from "./attachments.js";
import { UNFINISHED } from "./conversation.js";
import { element } from "./elements.js";
import { FeedbackControls } from "./feedback.js";
import { MarkdownStream } from "./markdown.js";

const BADGES = {
  queued: "Queued",
  streaming: "Writing…",
  incomplete: "Incomplete",
  failed: "Failed",
  cancelled: "Cancelled",
  interrupted: "Interrupted",
};

const INCOMPLETE_REASONS = {
  max_output_tokens: "output token limit reached",
  content_filter: "stopped by the content filter",
};

const numbers = new Intl.NumberFormat();

// After this long without a render, a streaming answer counts as waiting for text: its cursor
// pulses (chat.css).
const IDLE_AFTER_MS = 600;

// Setters that leave the DOM alone when nothing changes: render() runs up to ten times a second
// while an answer streams, and a write of the same value can still make the browser recompute
// the style and layout around it.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setHidden(node, hidden) {
  if (node.hidden !== hidden) node.hidden = hidden;
}

function setDisabled(node, disabled) {
  if (node.disabled !== disabled) node.disabled = disabled;
}

export function incompleteReason(reason) {
  if (!reason) return "";
  return INCOMPLETE_REASONS[reason] || reason.replaceAll("_", " ");
}

/** "11 in / 3 out · 14 tokens", or for an answer the API reported no usage for, its estimate. */
export function usageSummary(usage, estimatedTokens = null) {
  if (!usage) return estimatedTokens ? `about ${numbers.format(estimatedTokens)} tokens (estimated)` : "";
  const parts = [];
  if (usage.input_tokens != null) parts.push(`${numbers.format(usage.input_tokens)} in`);
  if (usage.output_tokens != null) {
    let out = `${numbers.format(usage.output_tokens)} out`;
    if (usage.reasoning_tokens) out += ` (${numbers.format(usage.reasoning_tokens)} reasoning)`;
    parts.push(out);
  }
  let summary = parts.join(" / ");
  if (usage.total_tokens != null) {
    summary += `${summary ? " · " : ""}${numbers.format(usage.total_tokens)} tokens`;
  }
  if (usage.cached_tokens) summary += ` (${numbers.format(usage.cached_tokens)} cached)`;
  return summary;
}

function seconds(milliseconds) {
  return `${(milliseconds / 1000).toFixed(1)} s`;
}

/** "first token 0.4 s · 2.1 s": how long the answer took to start, and in all. */
export function timingSummary(startedAt, firstTokenAt, finishedAt) {
  if (!startedAt || !finishedAt) return "";
  const start = Date.parse(startedAt);
  const total = seconds(Math.max(0, Date.parse(finishedAt) - start));
  if (!firstTokenAt) return total;
  return `first token ${seconds(Math.max(0, Date.parse(firstTokenAt) - start))} · ${total}`;
}

function formatTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString();
}

function button(className, text, label) {
  const node = element("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  return node;
}

/**
 * "Previous version", "2/3", "Next version" under a message that has other versions; hidden (and
 * without text) while it has none. `onSelect(id, direction)` asks for another version.
 */
class VersionNav {
  constructor(onSelect) {
    this.element = element("div", "versions");
    // The arrows are drawn by the stylesheet: the buttons' names are their labels.
    this.previous = button("version-button version-previous", "", "Previous version");
    this.next = button("version-button version-next", "", "Next version");
    this.label = element("span", "versions-label");
    this.label.setAttribute("aria-hidden", "true");
    this.spoken = element("span", "visually-hidden");
    this.element.append(this.previous, this.label, this.spoken, this.next);
    this.ids = [];
    this.index = 0;
    this.enabled = true;
    this.previous.addEventListener("click", () => onSelect(this.ids[this.index - 1], "previous"));
    this.next.addEventListener("click", () => onSelect(this.ids[this.index + 1], "next"));
  }

  /** `versions` as frames carry it: `{index, count, ids}`. */
  update(versions) {
    this.ids = versions?.ids || [];
    this.index = versions?.index || 0;
    const many = this.ids.length > 1;
    this.element.hidden = !many;
    this.label.textContent = many ? `${this.index + 1}/${this.ids.length}` : "";
    this.spoken.textContent = many ? `Version ${this.index + 1} of ${this.ids.length}` : "";
    this.setEnabled(this.enabled);
  }

  setEnabled(enabled) {
    this.enabled = enabled;
    this.previous.disabled = !enabled || this.index <= 0;
    this.next.disabled = !enabled || this.index >= this.ids.length - 1;
  }

  focus(direction) {
    const wanted = direction === "previous" ? this.previous : this.next;
    const other = wanted === this.previous ? this.next : this.previous;
    (wanted.disabled ? other : wanted).focus();
  }
}

export class UserMessageView {
  /** `readOnly` (a shared page): the message can be copied, not edited. */
  constructor(frame, { onSelect, onEdit, maxChars, readOnly = false }) {
    this.id = frame.id;
    this.role = "user";
    this.text = frame.text;
    this.onEdit = onEdit;
    this.maxChars = maxChars;
    this.editor = null;
    this.locked = false;
    this.element = element("article", "message message-user");
    this.element.setAttribute("aria-label", "User message");
    this.element.dataset.id = frame.id;
    this.bubble = element("div", "message-bubble", frame.text);
    this.bubble.title = formatTime(frame.created_at);
    // Its files, above its text (attachments.js); a message's files never change, its versions can.
    this.attachments = frame.attachments || [];
    this.files = messageAttachments(this.attachments);
    this.nav = new VersionNav((id, direction) => onSelect(this, id, direction));
    this.copyButton = button("copy-message-button", "Copy", "Copy message");
    this.editButton = button("edit-button", "Edit");
    this.editButton.addEventListener("click", () => this.startEditing());
    // Copy and Edit together, so that what reveals them (chat.css) is apart from what dims a
    // disabled button: both apply, and a disabled Edit stays as hidden as an enabled one.
    const actions = element("span", "user-actions");
    actions.append(this.copyButton);
    if (!readOnly) actions.append(this.editButton);
    this.foot = element("div", "message-foot user-foot");
    this.foot.append(this.nav.element, actions);
    this.element.append(this.files, this.bubble, this.foot);
    this.apply(frame);
  }

  /** A user message's text never changes; its versions can. */
  apply(frame) {
    this.parent = frame.parent ?? null;
    this.nav.update(frame.versions);
  }

  render() {}

  /** No editing or switching while an answer is written or a frame awaits its answer. */
  setControls({ locked }) {
    this.locked = locked;
    this.editButton.disabled = locked;
    this.nav.setEnabled(!locked);
    if (this.editor) this.updateEditor();
  }

  focusVersion(direction) {
    this.nav.focus(direction);
  }

  /**
   * Turns the message into a form that sends its text, changed, as a new version, with the
   * attachments kept (`keep`: the ids a refused edit had kept; all by default).
   */
  startEditing(text = this.text, keep = null) {
    if (this.editor) return;
    const form = element("form", "message-editor");
    const box = element("textarea", "message-editor-input");
    box.setAttribute("aria-label", "Edit message");
    box.rows = 2;
    box.value = text;
    const cancel = button("button-quiet", "Cancel");
    const save = element("button", "button-primary editor-save", "Save and send");
    save.type = "submit";
    const bar = element("div", "message-editor-bar");
    bar.append(cancel, save);
    const files = new EditorAttachments(this.attachments, keep);
    form.append(box, files.element, bar);
    this.editor = { form, box, save };

    const resize = () => {
      box.style.height = "auto";
      box.style.height = `${Math.min(box.scrollHeight, 320)}px`;
    };
    box.addEventListener("input", () => {
      resize();
      this.updateEditor();
    });
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        this.stopEditing(true);
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    cancel.addEventListener("click", () => this.stopEditing(true));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (save.disabled) return;
      this.onEdit(this, box.value, files.selection());
    });

    this.element.classList.add("is-editing");
    this.bubble.hidden = true;
    this.files.hidden = true;
    this.foot.hidden = true;
    this.element.append(form);
    this.updateEditor();
    resize();
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  updateEditor() {
    const text = this.editor.box.value;
    this.editor.save.disabled = this.locked || !text.trim() || text.length > this.maxChars;
  }

  stopEditing(restoreFocus = false) {
    if (!this.editor) return;
    this.editor.form.remove();
    this.editor = null;
    this.element.classList.remove("is-editing");
    this.bubble.hidden = false;
    this.files.hidden = this.attachments.length === 0;
    this.foot.hidden = false;
    if (restoreFocus) this.editButton.focus();
  }
}

export class AssistantMessageView {
  /** `readOnly` (a shared page): no Regenerate, Retry or feedback, only Copy. */
  constructor(frame, { onRegenerate, onContinue, onSelect, seq = null, readOnly = false }) {
    this.id = frame.id;
    this.role = "assistant";
    this.retried = false;
    this.last = false;
    this.locked = false;

    this.element = element("article", "message message-assistant");
    this.element.setAttribute("aria-label", "Assistant message");
    this.element.dataset.id = frame.id;

    this.thinking = element("details", "thinking");
    this.thinking.append(element("summary", "", "Thinking"));
    const thinkingBody = element("div", "markdown thinking-body");
    this.thinking.append(thinkingBody);
    this.body = element("div", "markdown message-body");
    this.refusal = element("div", "refusal");
    this.refusal.append(element("p", "refusal-label", "Refused"));
    this.refusalText = element("p", "refusal-text");
    this.refusal.append(this.refusalText);
    this.error = element("p", "message-error");
    this.placeholder = element("p", "message-placeholder");

    this.badge = element("span", "badge");
    this.meta = element("span", "message-meta");
    // Retry (a failed answer) and Regenerate (any other finished one) both ask for a new version
    // of this answer; the one replaced stays a click away in the version arrows.
    this.retryButton = button("retry-button", "Retry");
    this.regenerateButton = button("regenerate-button", "Regenerate");
    for (const action of [this.retryButton, this.regenerateButton]) {
      action.addEventListener("click", () => {
        this.retried = true;
        this.updateActions();
        onRegenerate(this);
      });
    }
    // Continue (continue.js): a new version that goes on from this one's text.
    this.continueButton = new ContinueButton(() => {
      this.retried = true;
      this.updateActions();
      onContinue(this);
    });
    this.nav = new VersionNav((id, direction) => onSelect(this, id, direction));
    this.timing = element("span", "message-timing");
    this.timing.title = "Time to the first token · time to the whole answer";
    // The visible word stays short; the accessible name says what is copied.
    this.copyButton = element("button", "copy-answer-button", "Copy");
    this.copyButton.type = "button";
    this.copyButton.setAttribute("aria-label", "Copy answer");
    const foot = element("div", "message-foot");
    // A shared page shows one path and no versions: only what can be read and copied.
    if (!readOnly) foot.append(this.nav.element);
    foot.append(this.badge, this.meta, this.timing, this.copyButton);
    if (!readOnly) foot.append(this.continueButton.element, this.regenerateButton, this.retryButton);
    this.feedback = readOnly ? null : new FeedbackControls(frame.id);
    if (this.feedback) foot.append(this.feedback.buttons);

    this.element.append(this.thinking, this.placeholder, this.body, this.refusal, this.error, foot);
    if (this.feedback) this.element.append(this.feedback.form);
    // Deltas go straight to the streams too; they reach the page on render().
    this.textStream = new MarkdownStream(this.body);
    this.reasoningStream = new MarkdownStream(thinkingBody);
    this.apply(frame, seq);
  }

  get unfinished() {
    return UNFINISHED.has(this.status);
  }

  /**
   * The whole message as the page data, `conversation.subscribed` or `message.done` give it.
   * `seq` is where its deltas start: 0 for an answer just created, null (wait for the snapshot)
   * for one already under way.
   */
  apply(frame, seq = null) {
    if (frame.versions) this.nav.update(frame.versions);
    if (frame.parent !== undefined) this.parent = frame.parent;
    // The same answer still in flight, described by its checkpoint (conversation.subscribed after
    // a reconnect): what is shown is newer, so it stays; the snapshot that follows brings the rest.
    const behind =
      this.unfinished &&
      UNFINISHED.has(frame.status) &&
      this.text.length > (frame.text || "").length &&
      this.text.startsWith(frame.text || "");
    this.status = frame.status;
    if (!behind) {
      this.text = frame.text || "";
      this.reasoning = frame.reasoning || "";
      this.refusalValue = frame.refusal || "";
      // The seq of the text shown, when known: a snapshot older than it is not applied.
      this.textSeq = this.unfinished ? seq : null;
      this.textStream.set(this.text);
      this.reasoningStream.set(this.reasoning);
    }
    this.model = frame.model || "";
    this.usage = frame.usage || null;
    this.estimatedTokens = frame.estimated_tokens ?? null;
    this.errorInfo = frame.error || null;
    this.incompleteReason = frame.incomplete_reason || "";
    this.createdAt = frame.created_at || this.createdAt;
    this.startedAt = frame.started_at || null;
    this.firstTokenAt = frame.first_token_at || null;
    this.finishedAt = frame.finished_at || null;
    // message.done carries no feedback: an answer just finished has none yet, and keeps any.
    if (this.feedback && frame.feedback !== undefined) this.feedback.set(frame.feedback);
    this.lastSeq = this.unfinished ? seq : 0;
    this.settled = false;
    this.dirty = true;
  }

  applySnapshot(frame) {
    if (this.textSeq != null && frame.seq < this.textSeq) {
      // Older than what is shown (another process's copy can lag): the page never goes back;
      // deltas after what is shown still apply.
      if (this.lastSeq === null) this.lastSeq = this.textSeq;
      return;
    }
    this.textSeq = frame.seq;
    this.status = frame.status || this.status;
    this.text = frame.text || "";
    this.reasoning = frame.reasoning || "";
    this.refusalValue = frame.refusal || "";
    this.lastSeq = frame.seq;
    this.textStream.set(this.text);
    this.reasoningStream.set(this.reasoning);
    this.dirty = true;
  }

  /** A delta frame: "applied", "duplicate" (already in the text) or "gap" (one was missed). */
  applyDelta(kind, frame) {
    if (!this.unfinished) return "duplicate";
    if (this.lastSeq === null) return "duplicate"; // waiting for the snapshot, which includes it
    if (frame.seq <= this.lastSeq) return "duplicate";
    if (frame.seq !== this.lastSeq + 1) return "gap";
    this.lastSeq = frame.seq;
    this.textSeq = frame.seq;
    if (kind === "reasoning") {
      this.reasoning += frame.delta;
      this.reasoningStream.append(frame.delta);
    } else if (kind === "refusal") {
      this.refusalValue += frame.delta;
    } else {
      this.text += frame.delta;
      this.textStream.append(frame.delta);
    }
    if (this.status === "queued") this.status = "streaming";
    this.dirty = true;
    return "applied";
  }

  applyStatus(status) {
    if (!this.unfinished) return; // a late status frame never reopens a finished answer
    this.status = status;
    this.dirty = true;
  }

  /** Called once per animation frame at most, when dirty. */
  render() {
    if (!this.dirty) return;
    this.dirty = false;
    const streaming = this.unfinished;
    if (this.element.dataset.status !== this.status) this.element.dataset.status = this.status;
    if (this.element.getAttribute("aria-busy") !== String(streaming)) {
      this.element.setAttribute("aria-busy", String(streaming));
    }

    setHidden(this.thinking, !this.reasoning);
    setHidden(this.refusal, !this.refusalValue);
    setText(this.refusalText, this.refusalValue);

    clearTimeout(this.idleTimer);
    this.element.classList.toggle("is-idle", false);
    if (streaming) {
      this.textStream.render();
      this.reasoningStream.render();
      this.idleTimer = setTimeout(() => this.element.classList.toggle("is-idle", true), IDLE_AFTER_MS);
    } else if (!this.settled) {
      this.textStream.finish(this.text);
      this.reasoningStream.finish(this.reasoning);
      this.settled = true;
    }

    let placeholder = "";
    if (this.status === "queued") placeholder = "Waiting for a free slot…";
    else if (streaming && !this.text && !this.refusalValue) placeholder = this.reasoning ? "Thinking…" : "";
    else if (this.status === "completed" && !this.text && !this.refusalValue) placeholder = "(No text in this answer.)";
    setText(this.placeholder, placeholder);
    setHidden(this.placeholder, !placeholder);
    this.element.classList.toggle("is-waiting", streaming && !this.text && !this.refusalValue);

    let badge = BADGES[this.status] || "";
    if (this.status === "incomplete" && this.incompleteReason) {
      badge += `: ${incompleteReason(this.incompleteReason)}`;
    }
    setText(this.badge, badge);
    if (this.badge.dataset.status !== this.status) this.badge.dataset.status = this.status;
    setHidden(this.badge, !badge);

    const failed = this.status === "failed";
    setHidden(this.error, !(failed && this.errorInfo));
    setText(this.error, this.errorInfo ? this.errorInfo.message || this.errorInfo.code : "");
    this.updateActions();

    setHidden(this.copyButton, streaming || !this.text);
    this.feedback?.setShown(!streaming);
    const timing = streaming ? "" : timingSummary(this.startedAt, this.firstTokenAt, this.finishedAt);
    setText(this.timing, timing);
    setHidden(this.timing, !timing);

    if (streaming) {
      setText(this.meta, "");
    } else {
      const usage = usageSummary(this.usage, this.estimatedTokens);
      setText(this.meta, [this.model, usage].filter(Boolean).join(" · "));
      this.meta.title = formatTime(this.createdAt);
    }
  }

  /** `last`: the conversation's last message; `locked`: an answer is written or a frame awaits its answer. */
  setControls({ locked, last }) {
    this.locked = locked;
    this.last = last;
    this.nav.setEnabled(!locked);
    this.updateActions();
  }

  focusVersion(direction) {
    this.nav.focus(direction);
  }

  updateActions() {
    const failed = this.status === "failed";
    const offered = this.last && !this.unfinished && !this.retried;
    setHidden(this.retryButton, !(offered && failed));
    setHidden(this.regenerateButton, !(offered && !failed));
    setDisabled(this.retryButton, this.locked);
    setDisabled(this.regenerateButton, this.locked);
    this.continueButton.update({ offered, locked: this.locked, status: this.status, text: this.text });
  }
}

export function createView(frame, options) {
  return frame.role === "user" ? new UserMessageView(frame, options) : new AssistantMessageView(frame, options);
}
