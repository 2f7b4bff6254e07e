// Thumbs up / down under an answer, with an optional comment: the owner's review for staff
// (chat.views.feedback). The stored value comes back from the server and is what is shown.

import { ApiError, postJson } from "./api.js";
import { element, icon } from "./elements.js";

// A thumb drawn for this site: a cuff on the left, the hand with its thumb raised. The "bad"
// button shows it turned upside down (chat.css).
const THUMB = "M3 10h3v10H3zM7.5 10 11 3.2c1.1-.5 2.6.3 2.4 1.8L13 9h6a2 2 0 0 1 2 2.3l-1.2 7A2 2 0 0 1 17.8 20H7.5z";

function button(className, label, text = "") {
  const node = element("button", className, text);
  node.type = "button";
  node.setAttribute("aria-label", label);
  return node;
}

export class FeedbackControls {
  constructor(messageId) {
    this.url = `/messages/${messageId}/feedback/`;
    this.value = null; // {rating, comment, at} as stored, or null
    this.saving = false;

    this.buttons = element("span", "feedback");
    this.good = button("feedback-button feedback-good", "Good answer");
    this.bad = button("feedback-button feedback-bad", "Bad answer");
    this.good.append(icon(THUMB));
    this.bad.append(icon(THUMB));
    this.commentButton = button("feedback-comment-button", "Comment on this answer", "Comment");
    this.commentButton.setAttribute("aria-expanded", "false");
    this.status = element("span", "feedback-status");
    this.status.setAttribute("role", "status");
    this.buttons.append(this.good, this.bad, this.commentButton, this.status);

    // A group, not a <form>: nothing in a message's article is a form that markup could forge
    // (tests/browser/test_security.py looks for any).
    this.form = element("div", "feedback-form");
    this.form.setAttribute("role", "group");
    this.form.setAttribute("aria-label", "Comment on the answer");
    this.form.hidden = true;
    this.box = element("textarea", "feedback-input");
    this.box.rows = 2;
    this.box.maxLength = 2000;
    this.box.setAttribute("aria-label", "Feedback comment");
    this.box.placeholder = "What was good or bad about this answer? (optional)";
    const close = button("button-quiet", "Close comment", "Close");
    const save = button("button-primary", "Save comment", "Save comment");
    const bar = element("div", "feedback-form-bar");
    bar.append(close, save);
    this.form.append(this.box, bar);

    this.good.addEventListener("click", () => this.rate("good"));
    this.bad.addEventListener("click", () => this.rate("bad"));
    this.commentButton.addEventListener("click", () => this.setOpen(this.form.hidden));
    close.addEventListener("click", () => {
      this.setOpen(false);
      this.commentButton.focus();
    });
    save.addEventListener("click", () => {
      if (this.value) this.save(this.value.rating, this.box.value, "Comment saved.");
    });
    this.set(null);
  }

  /** The stored feedback, from the page, a frame or the endpoint's answer. */
  set(value) {
    this.value = value || null;
    const rating = this.value?.rating || null;
    this.good.setAttribute("aria-pressed", String(rating === "good"));
    this.bad.setAttribute("aria-pressed", String(rating === "bad"));
    this.commentButton.hidden = !rating;
    if (!rating) this.setOpen(false);
    if (this.form.hidden) this.box.value = this.value?.comment || "";
  }

  /** Shown under a finished answer only: one still being written is not yet what it will be. */
  setShown(shown) {
    if (this.buttons.hidden === !shown) return;
    this.buttons.hidden = !shown;
    if (!shown) this.setOpen(false);
  }

  setOpen(open) {
    this.form.hidden = !open;
    this.commentButton.setAttribute("aria-expanded", String(open));
    if (open) this.box.value = this.value?.comment || "";
  }

  /** Choosing the pressed thumb again takes the rating back. */
  async rate(rating) {
    const next = this.value?.rating === rating ? null : rating;
    await this.save(next, this.value?.comment || "", next ? "Thanks for the feedback." : "Feedback removed.");
    if (next && this.value) this.setOpen(true);
  }

  async save(rating, comment, done) {
    if (this.saving) return;
    this.saving = true;
    try {
      const answer = await postJson(this.url, { rating, comment });
      this.setOpen(false);
      this.set(answer.feedback);
      this.status.textContent = done;
    } catch (error) {
      this.status.textContent = error instanceof ApiError ? error.message : "The feedback could not be saved.";
    } finally {
      this.saving = false;
    }
  }
}
