// Continue under an answer that stopped short of its end: cut off (`incomplete`, e.g. the output
// token limit), stopped, or interrupted by a restart. The server stores a new version that starts
// with this answer's text and asks the model for the rest (chat.continue, docs/protocol.md); this
// one stays a click away in the version arrows.

// The statuses an answer can be continued from, as the server decides (chat.models.CONTINUE_REFUSALS).
export const CONTINUABLE = new Set(["incomplete", "cancelled", "interrupted"]);

/** Whether an answer in this state can be continued: stopped short, with text to go on from. */
export function continuable(status, text) {
  return CONTINUABLE.has(status) && Boolean(text);
}

/** The frame that asks for the rest of the answer `messageId`. */
export function continueFrame(messageId) {
  return { type: "chat.continue", message: messageId };
}

/** The Continue button of one answer view; `onClick()` asks for the continuation. */
export class ContinueButton {
  constructor(onClick) {
    this.element = document.createElement("button");
    this.element.type = "button";
    this.element.className = "continue-button";
    this.element.textContent = "Continue";
    this.element.title = "Ask the model to go on from where this answer stopped";
    this.element.hidden = true;
    this.element.addEventListener("click", onClick);
  }

  /** `offered`: the answer is the last one, finished and not already being replaced; `locked`: an answer is written. */
  update({ offered, locked, status, text }) {
    const hidden = !(offered && continuable(status, text));
    if (this.element.hidden !== hidden) this.element.hidden = hidden;
    if (this.element.disabled !== locked) this.element.disabled = locked;
  }
}
