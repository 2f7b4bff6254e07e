// The conversation page's Share control: make a read-only link to the conversation as it is now,
// copy it, and list and revoke the conversation's links (chat.views.share, share_revoke).

import { ApiError, getJson, postForm } from "./api.js";
import { copyFrom } from "./markdown.js";

const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export class ShareDialog {
  /** `currentId()` names the open conversation; null on a new chat, where there is nothing to share. */
  constructor({ currentId }) {
    this.currentId = currentId;
    this.button = document.getElementById("share-button");
    this.dialog = document.getElementById("share-dialog");
    if (!this.button || !this.dialog) return; // CHAT_SHARING=0
    this.newLink = document.getElementById("share-new");
    this.url = document.getElementById("share-url");
    this.copy = document.getElementById("share-copy");
    this.error = document.getElementById("share-error");
    this.list = document.getElementById("share-links");
    this.none = document.getElementById("share-none");
    this.create = document.getElementById("share-create");
    this.revokeAll = document.getElementById("share-revoke-all");

    this.button.addEventListener("click", () => this.open());
    this.create.addEventListener("click", () => this.createLink());
    this.copy.addEventListener("click", () => this.copyLink());
    this.revokeAll.addEventListener("click", () => this.revoke({ all: "1" }));
    this.list.addEventListener("click", (event) => {
      const target = event.target.closest("button[data-token]");
      if (target) this.revoke({ token: target.dataset.token });
    });
  }

  /** The page now shows a conversation (a new chat got its first message). */
  conversationChanged() {
    if (this.button) this.button.hidden = !this.currentId();
  }

  base() {
    return `/c/${this.currentId()}/share/`;
  }

  async open() {
    if (!this.currentId()) return;
    this.newLink.hidden = true;
    this.showError("");
    this.dialog.showModal();
    await this.run(async () => this.showLinks((await getJson(this.base())).links));
  }

  async createLink() {
    this.create.disabled = true;
    try {
      await this.run(async () => {
        const answer = await postForm(this.base());
        this.url.value = answer.url;
        this.newLink.hidden = false;
        this.showLinks(answer.links);
        this.url.focus();
        this.url.select();
      });
    } finally {
      this.create.disabled = false;
    }
  }

  async copyLink() {
    await copyFrom(this.copy, this.url.value);
  }

  async revoke(fields) {
    await this.run(async () => {
      const answer = await postForm(`${this.base()}revoke/`, fields);
      if (fields.all || fields.token === this.shownToken()) this.newLink.hidden = true;
      this.showLinks(answer.links);
    });
  }

  shownToken() {
    return this.newLink.hidden ? null : this.url.value.split("/").filter(Boolean).pop();
  }

  async run(action) {
    this.showError("");
    try {
      await action();
    } catch (error) {
      this.showError(error instanceof ApiError ? error.message : "Something went wrong.");
    }
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  /** The live links, newest first; each opens in a new tab and has its Revoke button. */
  showLinks(links) {
    const items = links.map((link) => {
      const item = document.createElement("li");
      const anchor = document.createElement("a");
      anchor.href = link.url;
      anchor.target = "_blank";
      anchor.rel = "noopener noreferrer";
      const made = when.format(new Date(link.created_at));
      anchor.textContent = `${made} · ${link.messages} message${link.messages === 1 ? "" : "s"}`;
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "button-quiet";
      revoke.textContent = "Revoke";
      revoke.dataset.token = link.token;
      revoke.setAttribute("aria-label", `Revoke the link made ${made}`);
      item.append(anchor, revoke);
      return item;
    });
    this.list.replaceChildren(...items);
    this.none.hidden = items.length > 0;
    this.revokeAll.hidden = items.length < 2;
  }
}
