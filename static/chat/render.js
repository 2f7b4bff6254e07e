// One message of the conversation as an <article>, kept in step with the websocket frames.
//
// Frames only change a view's state and mark it dirty; `render()` (called at most once per
// animation frame by chat.js) brings the DOM up to date. Text from the server reaches the page
// through textContent or, for Markdown, through markdown.js's sanitizer.

import { MarkdownStream } from "./markdown.js";

export const UNFINISHED = new Set(["queued", "streaming"]);

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

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function incompleteReason(reason) {
  if (!reason) return "";
  return INCOMPLETE_REASONS[reason] || reason.replaceAll("_", " ");
}

export function usageSummary(usage) {
  if (!usage) return "";
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

export class UserMessageView {
  constructor(frame) {
    this.id = frame.id;
    this.role = "user";
    this.text = frame.text;
    this.element = element("article", "message message-user");
    this.element.setAttribute("aria-label", "User message");
    this.element.dataset.id = frame.id;
    const bubble = element("div", "message-bubble", frame.text);
    bubble.title = formatTime(frame.created_at);
    this.element.append(bubble);
  }

  apply() {} // a user message never changes

  render() {}
}

export class AssistantMessageView {
  constructor(frame, { onRetry, seq = null }) {
    this.id = frame.id;
    this.role = "assistant";
    this.retried = false;

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
    this.retryButton = element("button", "retry-button", "Retry");
    this.retryButton.type = "button";
    this.retryButton.addEventListener("click", () => {
      this.retried = true;
      this.dirty = true;
      this.render();
      onRetry(this);
    });
    this.timing = element("span", "message-timing");
    this.timing.title = "Time to the first token · time to the whole answer";
    // The visible word stays short; the accessible name says what is copied.
    this.copyButton = element("button", "copy-answer-button", "Copy");
    this.copyButton.type = "button";
    this.copyButton.setAttribute("aria-label", "Copy answer");
    const foot = element("div", "message-foot");
    foot.append(this.badge, this.meta, this.timing, this.copyButton, this.retryButton);

    this.element.append(this.thinking, this.placeholder, this.body, this.refusal, this.error, foot);
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
    this.status = frame.status;
    this.text = frame.text || "";
    this.reasoning = frame.reasoning || "";
    this.refusalValue = frame.refusal || "";
    this.model = frame.model || "";
    this.usage = frame.usage || null;
    this.errorInfo = frame.error || null;
    this.incompleteReason = frame.incomplete_reason || "";
    this.createdAt = frame.created_at || this.createdAt;
    this.startedAt = frame.started_at || null;
    this.firstTokenAt = frame.first_token_at || null;
    this.finishedAt = frame.finished_at || null;
    this.lastSeq = this.unfinished ? seq : 0;
    this.settled = false;
    this.dirty = true;
  }

  applySnapshot(frame) {
    this.status = frame.status || this.status;
    this.text = frame.text || "";
    this.reasoning = frame.reasoning || "";
    this.refusalValue = frame.refusal || "";
    this.lastSeq = frame.seq;
    this.dirty = true;
  }

  /** A delta frame: "applied", "duplicate" (already in the text) or "gap" (one was missed). */
  applyDelta(kind, frame) {
    if (!this.unfinished) return "duplicate";
    if (this.lastSeq === null) return "duplicate"; // waiting for the snapshot, which includes it
    if (frame.seq <= this.lastSeq) return "duplicate";
    if (frame.seq !== this.lastSeq + 1) return "gap";
    this.lastSeq = frame.seq;
    if (kind === "reasoning") this.reasoning += frame.delta;
    else if (kind === "refusal") this.refusalValue += frame.delta;
    else this.text += frame.delta;
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
    this.element.dataset.status = this.status;
    this.element.setAttribute("aria-busy", String(streaming));

    this.thinking.hidden = !this.reasoning;
    this.refusal.hidden = !this.refusalValue;
    this.refusalText.textContent = this.refusalValue;

    if (streaming) {
      this.textStream.update(this.text);
      if (this.reasoning) this.reasoningStream.update(this.reasoning);
    } else if (!this.settled) {
      this.textStream.finish(this.text);
      this.reasoningStream.finish(this.reasoning);
      this.settled = true;
    }

    let placeholder = "";
    if (this.status === "queued") placeholder = "Waiting for a free slot…";
    else if (streaming && !this.text && !this.refusalValue) placeholder = this.reasoning ? "Thinking…" : "";
    else if (this.status === "completed" && !this.text && !this.refusalValue) placeholder = "(No text in this answer.)";
    this.placeholder.textContent = placeholder;
    this.placeholder.hidden = !placeholder;
    this.element.classList.toggle("is-waiting", streaming && !this.text && !this.refusalValue);

    let badge = BADGES[this.status] || "";
    if (this.status === "incomplete" && this.incompleteReason) {
      badge += `: ${incompleteReason(this.incompleteReason)}`;
    }
    this.badge.textContent = badge;
    this.badge.dataset.status = this.status;
    this.badge.hidden = !badge;

    const failed = this.status === "failed";
    this.error.hidden = !(failed && this.errorInfo);
    this.error.textContent = this.errorInfo ? this.errorInfo.message || this.errorInfo.code : "";
    this.retryButton.hidden = !failed || this.retried;

    this.copyButton.hidden = streaming || !this.text;
    const timing = streaming ? "" : timingSummary(this.startedAt, this.firstTokenAt, this.finishedAt);
    this.timing.textContent = timing;
    this.timing.hidden = !timing;

    if (streaming) {
      this.meta.textContent = "";
    } else {
      const usage = usageSummary(this.usage);
      this.meta.textContent = [this.model, usage].filter(Boolean).join(" · ");
      this.meta.title = formatTime(this.createdAt);
    }
  }
}

export function createView(frame, options) {
  return frame.role === "user" ? new UserMessageView(frame) : new AssistantMessageView(frame, options);
}
