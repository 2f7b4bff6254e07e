// The sidebar's conversation list: search over titles and messages, inline rename, and delete
// after a confirmation dialog. Titles reach the page through textContent only.

import { ApiError, getJson, postForm } from "./api.js";

const SEARCH_DELAY_MS = 200;

function button(text, className, label) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  node.setAttribute("aria-label", label);
  return node;
}

export class Sidebar {
  /**
   * `currentId()` names the open conversation; `onRenamed(conversation)` and
   * `onDeletedCurrent(next)` let the page follow what happened to it.
   */
  constructor({ currentId, onRenamed, onDeletedCurrent }) {
    this.currentId = currentId;
    this.onRenamed = onRenamed;
    this.onDeletedCurrent = onDeletedCurrent;
    this.list = document.getElementById("conversation-list");
    this.searchForm = document.getElementById("conversation-search");
    this.searchInput = document.getElementById("search-input");
    this.searchStatus = document.getElementById("search-status");
    this.dialog = document.getElementById("delete-dialog");
    this.dialogTitle = document.getElementById("delete-dialog-title");
    this.dialogError = document.getElementById("delete-dialog-error");
    this.dialogText = document.getElementById("delete-dialog-text");
    this.confirmDelete = document.getElementById("confirm-delete");
    this.deleting = null; // the list item the dialog asks about
    this.searchTimer = null;
    this.searchNumber = 0; // answers to older searches are ignored

    for (const item of this.list.querySelectorAll("li")) this.decorate(item);
    this.list.addEventListener("click", (event) => this.onClick(event));
    this.searchInput.addEventListener("input", () => this.scheduleSearch());
    this.searchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.confirmDelete.addEventListener("click", () => this.deleteConfirmed());
    this.dialog.addEventListener("close", () => {
      this.deleting = null;
    });
  }

  /** A list item for {id, title, url}, with its Rename and Delete buttons. */
  item({ id, title, url }) {
    const item = document.createElement("li");
    item.dataset.id = id;
    const link = document.createElement("a");
    link.href = url || `/c/${id}/`;
    link.textContent = title || "New conversation";
    item.append(link);
    this.decorate(item);
    return item;
  }

  decorate(item) {
    item.classList.add("conversation-item");
    const actions = document.createElement("span");
    actions.className = "conversation-actions";
    actions.append(button("Rename", "item-button rename-button", ""), button("Delete", "item-button delete-button", ""));
    item.append(actions);
    this.label(item);
  }

  /** Buttons named after their conversation, so a screen reader's list of buttons makes sense. */
  label(item) {
    const title = item.querySelector("a").textContent;
    item.querySelector(".rename-button").setAttribute("aria-label", `Rename ${title}`);
    item.querySelector(".delete-button").setAttribute("aria-label", `Delete ${title}`);
  }

  find(id) {
    for (const item of this.list.children) if (item.dataset.id === id) return item;
    return null;
  }

  onClick(event) {
    const target = event.target.closest("button");
    if (!target) return;
    const item = target.closest("li");
    if (target.classList.contains("rename-button")) this.startRename(item);
    else if (target.classList.contains("delete-button")) this.askDelete(item);
  }

  // --- rename ----------------------------------------------------------------------------------

  startRename(item) {
    if (item.querySelector("input")) return;
    const link = item.querySelector("a");
    const input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = link.textContent;
    input.maxLength = 120;
    input.setAttribute("aria-label", "Conversation title");
    item.classList.add("is-renaming");
    item.prepend(input);
    input.focus();
    input.select();

    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const title = input.value.trim();
      if (save && title && title !== link.textContent) {
        try {
          const { conversation } = await postForm(`/c/${item.dataset.id}/rename/`, { title });
          link.textContent = conversation.title;
          this.label(item);
          if (conversation.id === this.currentId()) this.onRenamed(conversation);
        } catch (error) {
          window.alert(error instanceof ApiError ? error.message : "The title could not be saved.");
        }
      }
      input.remove();
      item.classList.remove("is-renaming");
      item.querySelector(".rename-button").focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation(); // Escape here cancels the rename, not the answer
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  // --- delete ----------------------------------------------------------------------------------

  askDelete(item) {
    this.deleting = item;
    // The title is quoted in a sentence of its own: a title with its own punctuation ("Hi! Who
    // are you?") inside the question read "…you?”?".
    this.dialogTitle.textContent = "Delete this conversation?";
    this.dialogText.textContent = `“${item.querySelector("a").textContent}” and its messages will be deleted; this cannot be undone.`;
    this.dialogError.hidden = true;
    this.dialog.showModal();
  }

  async deleteConfirmed() {
    const item = this.deleting;
    if (!item) return;
    this.confirmDelete.disabled = true;
    try {
      const answer = await postForm(`/c/${item.dataset.id}/delete/`);
      const wasCurrent = item.dataset.id === this.currentId();
      item.remove();
      this.dialog.close();
      if (wasCurrent) this.onDeletedCurrent(answer.next);
    } catch (error) {
      this.dialogError.textContent = error instanceof ApiError ? error.message : "It could not be deleted.";
      this.dialogError.hidden = false;
    } finally {
      this.confirmDelete.disabled = false;
    }
  }

  // --- search ----------------------------------------------------------------------------------

  scheduleSearch() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.search(), SEARCH_DELAY_MS);
  }

  async search() {
    clearTimeout(this.searchTimer);
    const query = this.searchInput.value.trim();
    const number = ++this.searchNumber;
    let found;
    try {
      found = await getJson("/search/", { q: query });
    } catch (error) {
      if (number !== this.searchNumber) return;
      this.searchStatus.textContent = error instanceof ApiError ? error.message : "Search failed.";
      this.searchStatus.hidden = false;
      return;
    }
    if (number !== this.searchNumber) return;
    const current = this.currentId();
    const items = found.conversations.map((conversation) => {
      const item = this.item(conversation);
      if (conversation.id === current) item.querySelector("a").setAttribute("aria-current", "page");
      if (conversation.snippet) showSnippet(item, conversation.snippet);
      return item;
    });
    this.list.replaceChildren(...items);
    const none = query && items.length === 0;
    this.searchStatus.textContent = none ? "No conversations found." : "";
    this.searchStatus.hidden = !none;
  }
}

/**
 * Under a search result, the words around the match, the match highlighted (<mark>); the link
 * is described by it. Text goes in through textContent only.
 */
function showSnippet(item, { before, match, after }) {
  const snippet = document.createElement("p");
  snippet.className = "search-snippet";
  snippet.id = `snippet-${item.dataset.id}`;
  const mark = document.createElement("mark");
  mark.textContent = match;
  snippet.append(before, mark, after);
  item.append(snippet);
  item.querySelector("a").setAttribute("aria-describedby", snippet.id);
}
