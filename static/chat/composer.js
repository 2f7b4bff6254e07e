// The composer: the message box, the model picker, Send and Stop, the character count and the
// error line above it. It knows nothing of the conversation: the page tells it what state to show
// (`update`) and hears what the user asks for (`onSubmit`, `onStop`, `onInput`).

// The box grows with its text up to this height (CSS pixels), then scrolls.
const MAX_INPUT_HEIGHT = 240;

export class Composer {
  /**
   * `maxChars` is the longest message the server takes; `onSubmit()` is Send or Enter,
   * `onStop()` the Stop button, `onInput()` any change to the text.
   */
  constructor({ maxChars, onSubmit, onStop, onInput }) {
    this.maxChars = maxChars;
    this.form = document.getElementById("composer");
    this.input = document.getElementById("message-input");
    this.model = document.getElementById("model");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.charCount = document.getElementById("char-count");
    this.error = document.getElementById("composer-error");

    this.model.addEventListener("change", () => this.showModelTitle());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      onSubmit();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        onSubmit();
      }
    });
    this.input.addEventListener("input", () => {
      this.resizeInput();
      onInput();
    });
    this.stopButton.addEventListener("click", onStop);
  }

  /** The picker's options: `models` by name, labelled by `labels`, `preferred` chosen if offered. */
  fillModels(models, labels, preferred) {
    for (const name of models) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = labels?.[name] || name;
      this.model.append(option);
    }
    if (preferred && models.includes(preferred)) this.model.value = preferred;
    this.showModelTitle();
    // With one model the picker still names it (e.g. "Local model: SmolLM2-135M, offline").
    this.model.disabled = models.length < 2;
  }

  /** The chosen model's whole name, for a picker too narrow to show it (a phone). */
  showModelTitle() {
    this.model.title = this.model.selectedOptions[0]?.textContent || "";
  }

  /** The chosen model's name, or undefined when none is offered. */
  get modelName() {
    return this.model.value || undefined;
  }

  get text() {
    return this.input.value;
  }

  clear() {
    this.input.value = "";
    this.resizeInput();
  }

  /** Nothing typed is lost: a refused text goes back in front of what has been typed since. */
  giveBack(text) {
    const current = this.input.value;
    this.input.value = current.trim() ? `${text}\n\n${current}` : text;
    this.resizeInput();
  }

  resizeInput() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, MAX_INPUT_HEIGHT)}px`;
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  /**
   * Shows the page's state: `busy` (an answer is being written: Stop instead of Send), `stopping`
   * (its Stop was sent), `spent` (today's budget: the box is disabled, what is typed stays in it)
   * and `waiting` (a send or a new chat awaits the server); `files`, how many uploaded files wait
   * to go with the message: files alone make one.
   */
  update({ busy, stopping, spent, waiting, files = 0 }) {
    const length = this.input.value.length;
    const tooLong = length > this.maxChars;
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
    this.stopButton.disabled = stopping;
    this.input.disabled = spent;
    this.sendButton.disabled = spent || (!this.input.value.trim() && !files) || tooLong || waiting;
    this.charCount.hidden = length < this.maxChars * 0.9;
    this.charCount.textContent = `${length.toLocaleString()} / ${this.maxChars.toLocaleString()}`;
    this.charCount.classList.toggle("is-over", tooLong);
  }
}
