// The conversation's instructions in the Conversation settings panel: filled from the server
// unless the user is editing them, saved with POST /c/<id>/instructions/ (chat.views), Save
// offered only for a change.

import { ApiError, postForm } from "./api.js";

export class InstructionsPanel {
  /**
   * `current()` gives the open conversation ({id, instructions, ...}, null on a new chat), which a
   * save updates; `announce(text)` tells screen readers that it was saved.
   */
  constructor({ current, announce }) {
    this.current = current;
    this.announce = announce;
    this.field = document.getElementById("instructions");
    this.hint = document.getElementById("instructions-hint");
    this.saveButton = document.getElementById("save-instructions");
    this.saved = this.field.value; // the server's text, as far as this page knows

    this.field.addEventListener("input", () => this.updateSave());
    this.saveButton.addEventListener("click", () => this.save());
  }

  /** What is in the field now (sent with a new chat made for its instructions). */
  get value() {
    return this.field.value;
  }

  /** Fills the field from the server, unless the user is editing it. */
  show(conversation) {
    this.saveButton.hidden = false;
    this.hint.textContent = "Sent to the model with every answer in this conversation.";
    const server = conversation.instructions ?? this.saved;
    if (this.field.value === this.saved) this.field.value = server;
    this.saved = server;
    this.updateSave();
  }

  /** Save is offered only for a change: a button that would save nothing is disabled. */
  updateSave() {
    this.saveButton.disabled = this.current() === null || this.field.value === this.saved;
  }

  async save() {
    const conversation = this.current();
    if (!conversation) return;
    this.saveButton.disabled = true;
    try {
      const answer = await postForm(`/c/${conversation.id}/instructions/`, { instructions: this.field.value });
      // The current record: a resubscribe meanwhile may have replaced the one asked about.
      this.current().instructions = answer.conversation.instructions;
      this.saved = answer.conversation.instructions;
      this.field.value = answer.conversation.instructions;
      this.hint.textContent = "Saved. The next answer follows these instructions.";
      this.announce("Instructions saved.");
    } catch (error) {
      this.hint.textContent = error instanceof ApiError ? error.message : "Could not save.";
    } finally {
      this.updateSave();
    }
  }
}
