// How much of the model's context the conversation fills, and where its latest answer's input
// started (chat/answering/context.py fits the input to the model's context by leaving out the
// oldest turns).
//
// - The gauge on the composer: the latest answer's reported usage (input and output tokens) of
//   the chosen model's context size (the page's `model_contexts`), as a meter named "Context
//   used" whose value reads "1,234 of 2,048 tokens". It follows message.done frames and the
//   model picker.
// - The marker "Earlier messages are not sent to the model", above the first message the latest
//   answer was sent, when older ones were left out. Frames name that message by `context_start`
//   (docs/protocol.md): message frames, message.status as a worker takes the answer, message.done.
//
// The page calls `heard(frame)` after the conversation's state has applied each frame, and
// `refresh()` once the page's own messages are added.

import { element } from "./elements.js";

const numbers = new Intl.NumberFormat();
const MARKER_TEXT = "Earlier messages are not sent to the model";
// From this share of the context on the gauge says the conversation is nearly full.
const NEARLY_FULL = 0.8;

export class ContextDisplay {
  /**
   * `contexts` is {model: tokens}; `state` the page's ConversationState (its views in order);
   * `messages` the list the views' elements are in; `model` the model picker, `bar` the
   * composer's bar the gauge goes into, before `before`.
   */
  constructor({ contexts, state, messages, model, bar, before }) {
    this.contexts = contexts || {};
    this.state = state;
    this.messages = messages;
    this.model = model;
    // message id -> the id of the first message its input held, or null: all of it. Only answers
    // a worker took are here (an answer still queued, or stopped before it started, has no input).
    this.starts = new Map();

    this.gauge = element("div", "context-gauge");
    this.gauge.setAttribute("role", "meter");
    this.gauge.setAttribute("aria-label", "Context used");
    this.gauge.setAttribute("aria-valuemin", "0");
    this.ring = element("span", "context-ring");
    this.text = element("span", "context-text");
    this.percent = element("span", "context-percent");
    for (const part of [this.ring, this.text, this.percent]) part.setAttribute("aria-hidden", "true");
    this.gauge.append(this.ring, this.text, this.percent);
    this.gauge.hidden = true;
    bar.insertBefore(this.gauge, before);

    this.marker = element("div", "context-marker");
    this.marker.setAttribute("role", "separator");
    this.marker.setAttribute("aria-label", MARKER_TEXT);
    this.marker.append(element("span", "context-marker-text", MARKER_TEXT));

    model.addEventListener("change", () => this.refresh());
  }

  /** A message frame (page data, subscribed, path, created, done): its input's start, if decided. */
  learn(message) {
    if (message.role === "user" || !message.started_at) return;
    this.starts.set(message.id ?? message.message, message.context_start ?? null);
  }

  heard(frame) {
    if (frame.type.endsWith(".delta") || frame.type === "message.snapshot") return; // nothing of the context
    if (frame.messages) for (const message of frame.messages) this.learn(message);
    else if (frame.type === "message.created") this.learn(frame.message);
    else if (frame.type === "message.done") this.learn(frame);
    else if (frame.type === "message.status" && "context_start" in frame) {
      this.starts.set(frame.message, frame.context_start);
    }
    this.refresh();
  }

  /** The page's own messages, at load. */
  load(messages) {
    for (const message of messages) this.learn(message);
    this.refresh();
  }

  refresh() {
    this.showMarker();
    this.showGauge();
  }

  /** Above the first message sent with the latest answer that was sent anything. */
  showMarker() {
    let start = null;
    for (let index = this.state.order.length - 1; index >= 0; index -= 1) {
      const view = this.state.order[index];
      if (view.role === "assistant" && this.starts.has(view.id)) {
        start = this.starts.get(view.id);
        break;
      }
    }
    const first = start ? this.state.views.get(start) : null;
    if (!first || !first.element.isConnected) {
      this.marker.remove();
      return;
    }
    if (first.element.previousElementSibling !== this.marker) this.messages.insertBefore(this.marker, first.element);
  }

  /** The latest reported usage against the chosen model's context. */
  showGauge() {
    const size = this.contexts[this.model.value];
    let used = 0;
    let answered = false;
    for (let index = this.state.order.length - 1; index >= 0; index -= 1) {
      const view = this.state.order[index];
      if (view.role !== "assistant" || view.unfinished) continue;
      answered = true;
      const usage = view.usage;
      if (usage && (usage.input_tokens != null || usage.output_tokens != null)) {
        used = (usage.input_tokens || 0) + (usage.output_tokens || 0);
        answered = false;
        break;
      }
    }
    // Answers with no reported usage (imported, stopped): no figure to show rather than a wrong one.
    this.gauge.hidden = !size || answered;
    if (this.gauge.hidden) return;
    const share = Math.min(used / size, 1);
    const sentence = `${numbers.format(used)} of ${numbers.format(size)} tokens`;
    this.gauge.setAttribute("aria-valuemax", String(size));
    this.gauge.setAttribute("aria-valuenow", String(Math.min(used, size)));
    this.gauge.setAttribute("aria-valuetext", sentence);
    this.gauge.title = `Context used: ${sentence}`;
    this.text.textContent = sentence;
    this.percent.textContent = `${Math.round(share * 100)}%`;
    this.ring.style.setProperty("--used", String(share));
    this.gauge.dataset.level = share >= 1 ? "full" : share >= NEARLY_FULL ? "high" : "normal";
  }
}
