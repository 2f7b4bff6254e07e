// The sidebar: the conversation list (pinned ones first), the archived ones, search over titles
// and messages, each row's actions in a menu, and import and export. Titles reach the page
// through textContent only.
//
// Each row is one Tab stop, its link. Its actions (Rename, Pin, Archive, Download as Markdown,
// Delete) are in a menu opened by the row's "⋯" button, by Shift+F10 or the context-menu key on
// the link, and driven as a WAI-ARIA menu: arrows, Home, End, a letter, Enter, Escape. Up and Down
// on a link move between rows. Pins and archiving made in any tab reach every tab
// (`conversation.updated` frames, applied by `apply`).

import { ApiError, getJson, postFile, postForm } from "./api.js";

const SEARCH_DELAY_MS = 200;

/** Shown on the page: not hidden, and not inside a closed <details> (which offsetParent misses). */
function visible(element) {
  return element.checkVisibility ? element.checkVisibility() : element.offsetParent !== null;
}

function timeOf(value) {
  const time = Date.parse(value || "");
  return Number.isNaN(time) ? 0 : time;
}

export class Sidebar {
  /**
   * `currentId()` names the open conversation; `onRenamed(conversation)` and
   * `onDeletedCurrent(next)` let the page follow what happened to it; `announce(text)` tells
   * screen readers what an action did.
   */
  constructor({ currentId, onRenamed, onDeletedCurrent, announce }) {
    this.currentId = currentId;
    this.onRenamed = onRenamed;
    this.onDeletedCurrent = onDeletedCurrent;
    this.announce = announce || (() => {});
    this.nav = document.getElementById("sidebar");
    this.list = document.getElementById("conversation-list");
    this.archivedSection = document.getElementById("archived-section");
    this.archivedList = document.getElementById("archived-list");
    this.archivedCount = document.getElementById("archived-count");
    this.results = document.getElementById("search-results");
    this.menu = document.getElementById("row-menu");
    this.searchForm = document.getElementById("conversation-search");
    this.searchInput = document.getElementById("search-input");
    this.searchStatus = document.getElementById("search-status");
    this.dialog = document.getElementById("delete-dialog");
    this.dialogTitle = document.getElementById("delete-dialog-title");
    this.dialogError = document.getElementById("delete-dialog-error");
    this.dialogText = document.getElementById("delete-dialog-text");
    this.confirmDelete = document.getElementById("confirm-delete");
    this.importButton = document.getElementById("import-button");
    this.importFile = document.getElementById("import-file");
    this.importStatus = document.getElementById("import-status");
    this.importSkipped = document.getElementById("import-skipped");
    this.deleting = null; // the row the dialog asks about
    this.menuRow = null; // the row whose menu is open
    this.menuReturn = null; // where focus goes when the menu closes
    this.searchTimer = null;
    this.searchNumber = 0; // answers to older searches are ignored

    for (const item of this.nav.querySelectorAll(".conversation-list > li")) this.decorate(item);
    this.nav.addEventListener("click", (event) => this.onClick(event));
    this.nav.addEventListener("keydown", (event) => this.onRowKey(event));
    this.menu.addEventListener("keydown", (event) => this.onMenuKey(event));
    this.menu.addEventListener("click", (event) => this.onMenuClick(event));
    this.menu.addEventListener("focusout", (event) => {
      if (!this.menu.contains(event.relatedTarget) && event.relatedTarget !== this.menuButton()) this.closeMenu(false);
    });
    document.addEventListener("pointerdown", (event) => {
      if (this.menuRow && !this.menu.contains(event.target) && event.target !== this.menuButton()) this.closeMenu(false);
    });
    this.searchInput.addEventListener("input", () => this.scheduleSearch());
    this.searchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.confirmDelete.addEventListener("click", () => this.deleteConfirmed());
    this.dialog.addEventListener("close", () => {
      this.deleting = null;
    });
    this.importButton.addEventListener("click", () => this.importFile.click());
    this.importFile.addEventListener("change", () => this.importChosen());
    this.showArchivedCount();
  }

  // --- rows ------------------------------------------------------------------------------------

  /** A row for a sidebar item {id, title, url, pinned, pinned_at, archived, updated_at}. */
  item(conversation) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    const link = document.createElement("a");
    link.href = conversation.url || `/c/${conversation.id}/`;
    link.textContent = conversation.title || "New conversation";
    item.append(link);
    this.setState(item, conversation);
    this.decorate(item);
    return item;
  }

  decorate(item) {
    item.classList.add("conversation-item");
    const state = document.createElement("span");
    state.className = "row-state";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "row-menu-button";
    button.tabIndex = -1; // one Tab stop per row: its link (Shift+F10 there opens the menu)
    button.setAttribute("aria-haspopup", "menu");
    button.setAttribute("aria-expanded", "false");
    button.setAttribute("aria-controls", "row-menu");
    button.textContent = "⋯";
    item.append(state, button);
    item.querySelector("a").setAttribute("aria-keyshortcuts", "Shift+F10");
    this.label(item);
  }

  setState(item, { pinned, pinned_at, archived, updated_at }) {
    item.toggleAttribute("data-pinned", Boolean(pinned) && !archived);
    item.toggleAttribute("data-archived", Boolean(archived));
    if (pinned_at !== undefined) item.dataset.pinnedAt = pinned_at || "";
    if (updated_at) item.dataset.updated = updated_at;
  }

  /** Names follow the title and the state, so a screen reader's list of controls makes sense. */
  label(item) {
    const title = item.querySelector("a").textContent;
    item.querySelector(".row-menu-button").setAttribute("aria-label", `Actions for ${title}`);
    const state = item.querySelector(".row-state");
    // Outside the link, whose name stays the title.
    state.textContent = item.hasAttribute("data-archived") ? "Archived" : item.hasAttribute("data-pinned") ? "Pinned" : "";
  }

  rows(id) {
    return [...this.nav.querySelectorAll(".conversation-list > li")].filter((item) => item.dataset.id === id);
  }

  find(id) {
    return this.rows(id).find((item) => item.parentElement !== this.results) || null;
  }

  /** A conversation's row changed here or in another tab (its sidebar item): show it so. */
  apply(conversation) {
    let item = this.find(conversation.id);
    if (item === null) item = this.item(conversation);
    for (const row of [item, ...this.rows(conversation.id)]) {
      row.querySelector("a").textContent = conversation.title || "New conversation";
      this.setState(row, conversation);
      this.label(row);
    }
    this.place(item);
    if (conversation.id === this.currentId()) this.onRenamed(conversation);
  }

  /** Puts a row where a reload would show it: pinned ones first, newest pin first, then by activity. */
  place(item) {
    if (item === this.menuRow) this.closeMenu(false);
    // Moving a node drops its focus: it is given back, or, when the row goes out of sight (into
    // the closed "Archived" list), to a neighbour. Focus never lands on something invisible.
    const focused = item.contains(document.activeElement) ? document.activeElement : null;
    const neighbour = focused ? this.neighbourOf(item) : null;
    if (item.hasAttribute("data-archived")) {
      if (item.parentElement !== this.archivedList) this.archivedList.prepend(item);
    } else {
      const pinned = item.hasAttribute("data-pinned");
      const key = timeOf(pinned ? item.dataset.pinnedAt : item.dataset.updated);
      const before = [...this.list.children].find((other) => {
        if (other === item) return false;
        const otherPinned = other.hasAttribute("data-pinned");
        if (pinned !== otherPinned) return pinned;
        return timeOf(pinned ? other.dataset.pinnedAt : other.dataset.updated) <= key;
      });
      if (before) this.list.insertBefore(item, before);
      else this.list.append(item);
    }
    this.showArchivedCount();
    if (focused !== null) (visible(focused) ? focused : neighbour).focus();
  }

  /** The visible row link after (else before) `item`'s, or the search box. */
  neighbourOf(item) {
    const links = [...this.nav.querySelectorAll(".conversation-item > a")].filter(visible);
    const own = item.querySelector("a");
    const here = links.indexOf(own);
    return links[here + 1] || links[here - 1] || this.searchInput;
  }

  showArchivedCount() {
    const count = this.archivedList.children.length;
    this.archivedCount.textContent = String(count);
    this.archivedSection.hidden = count === 0 || this.searching();
  }

  /** The open conversation: its row is marked, and one it is active in leads the unpinned ones. */
  markCurrent(conversation, { active = false } = {}) {
    for (const link of this.nav.querySelectorAll(".conversation-list a[aria-current]")) {
      link.removeAttribute("aria-current");
    }
    let item = this.find(conversation.id);
    if (item === null) {
      item = this.item({ ...conversation, updated_at: new Date().toISOString() });
      this.place(item);
    } else if (active && !item.hasAttribute("data-pinned") && !item.hasAttribute("data-archived")) {
      item.dataset.updated = new Date().toISOString();
      this.place(item);
    }
    for (const row of this.rows(conversation.id)) row.querySelector("a").setAttribute("aria-current", "page");
  }

  onClick(event) {
    const button = event.target.closest(".row-menu-button");
    if (!button) return;
    const item = button.closest("li");
    if (this.menuRow === item) this.closeMenu();
    else this.openMenu(item, { from: button });
  }

  /** Keys on a row's link: Shift+F10 or the context-menu key opens its menu; Up and Down move. */
  onRowKey(event) {
    const link = event.target.closest(".conversation-item > a");
    if (!link || this.menu.contains(event.target)) return;
    const item = link.parentElement;
    if ((event.key === "F10" && event.shiftKey) || event.key === "ContextMenu") {
      event.preventDefault();
      this.openMenu(item, { from: link });
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const links = [...this.nav.querySelectorAll(".conversation-item > a")].filter(visible);
      const next = links[links.indexOf(link) + (event.key === "ArrowDown" ? 1 : -1)];
      if (next) {
        event.preventDefault();
        next.focus();
      }
    }
  }

  // --- the row's menu ----------------------------------------------------------------------------

  menuButton() {
    return this.menuRow?.querySelector(".row-menu-button") || null;
  }

  menuItems() {
    return [...this.menu.querySelectorAll('[role="menuitem"]')];
  }

  openMenu(item, { from, last = false }) {
    this.closeMenu(false);
    const id = item.dataset.id;
    const archived = item.hasAttribute("data-archived");
    const pinned = item.hasAttribute("data-pinned");
    const entry = (text, action) => {
      const node = document.createElement("button");
      node.type = "button";
      node.setAttribute("role", "menuitem");
      node.tabIndex = -1;
      node.dataset.action = action;
      node.textContent = text;
      return node;
    };
    const download = document.createElement("a");
    download.setAttribute("role", "menuitem");
    download.tabIndex = -1;
    download.href = `/c/${id}/export.md`;
    download.download = "";
    download.textContent = "Download as Markdown";
    const entries = [
      entry("Rename", "rename"),
      entry(pinned ? "Unpin" : "Pin", pinned ? "unpin" : "pin"),
      entry(archived ? "Restore" : "Archive", archived ? "restore" : "archive"),
      download,
      entry("Delete", "delete"),
    ];
    entries[entries.length - 1].classList.add("is-danger");
    this.menu.replaceChildren(
      ...entries.map((node) => {
        const li = document.createElement("li");
        li.setAttribute("role", "none");
        li.append(node);
        return li;
      }),
    );
    this.menu.setAttribute("aria-label", `Actions for ${item.querySelector("a").textContent}`);
    item.append(this.menu); // after its button: the reading order follows
    item.classList.add("has-menu");
    item.querySelector(".row-menu-button").setAttribute("aria-expanded", "true");
    this.menuRow = item;
    this.menuReturn = from;
    this.menu.hidden = false;
    this.menu.scrollIntoView({ block: "nearest" });
    const items = this.menuItems();
    (last ? items[items.length - 1] : items[0]).focus();
  }

  /** Closes the menu; focus goes back where it was opened from unless `restoreFocus` is false. */
  closeMenu(restoreFocus = true) {
    const item = this.menuRow;
    if (!item) return;
    this.menuRow = null;
    this.menu.hidden = true;
    item.classList.remove("has-menu");
    item.querySelector(".row-menu-button")?.setAttribute("aria-expanded", "false");
    const back = this.menuReturn;
    this.menuReturn = null;
    document.body.append(this.menu); // out of the row, which a search or a move may remove
    if (restoreFocus && back?.isConnected) back.focus();
  }

  onMenuKey(event) {
    const items = this.menuItems();
    const index = items.indexOf(document.activeElement);
    const move = (to) => {
      event.preventDefault();
      items[(to + items.length) % items.length].focus();
    };
    if (event.key === "ArrowDown") move(index + 1);
    else if (event.key === "ArrowUp") move(index - 1);
    else if (event.key === "Home") move(0);
    else if (event.key === "End") move(items.length - 1);
    else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // Escape here closes the menu, not the answer
      this.closeMenu();
    } else if (event.key === "Tab") {
      this.closeMenu(false); // focus moves on as Tab takes it
    } else if (event.key === " " && document.activeElement?.tagName === "A") {
      event.preventDefault();
      document.activeElement.click();
    } else if (event.key.length === 1 && /\S/.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
      // Type-ahead: the next item starting with the letter.
      const letter = event.key.toLowerCase();
      const order = [...items.slice(index + 1), ...items.slice(0, index + 1)];
      const found = order.find((node) => node.textContent.trim().toLowerCase().startsWith(letter));
      if (found) {
        event.preventDefault();
        found.focus();
      }
    }
  }

  onMenuClick(event) {
    const target = event.target.closest('[role="menuitem"]');
    if (!target) return;
    const item = this.menuRow;
    if (target.tagName === "A") {
      this.closeMenu(false);
      return; // the download goes on
    }
    const action = target.dataset.action;
    const link = item.querySelector("a");
    this.closeMenu(action !== "rename" && action !== "delete");
    if (action === "rename") this.startRename(item);
    else if (action === "delete") this.askDelete(item, link);
    else if (action === "pin" || action === "unpin") this.pin(item, action === "pin");
    else this.archive(item, action === "archive");
  }

  // --- pin and archive ---------------------------------------------------------------------------

  async pin(item, pinned) {
    const title = item.querySelector("a").textContent;
    try {
      const { conversation } = await postForm(`/c/${item.dataset.id}/pin/`, { pinned });
      this.apply(conversation);
      this.find(conversation.id)?.querySelector("a").focus();
      this.announce(pinned ? `Pinned ${title}.` : `Unpinned ${title}.`);
    } catch (error) {
      window.alert(error instanceof ApiError ? error.message : "That could not be saved.");
    }
  }

  async archive(item, archived) {
    const title = item.querySelector("a").textContent;
    try {
      const { conversation } = await postForm(`/c/${item.dataset.id}/archive/`, { archived });
      this.apply(conversation); // an archived row's focus goes to a neighbour (place)
      const moved = this.find(conversation.id)?.querySelector("a");
      if (!archived && moved && visible(moved)) moved.focus();
      this.announce(archived ? `Archived ${title}.` : `Restored ${title}.`);
    } catch (error) {
      window.alert(error instanceof ApiError ? error.message : "That could not be saved.");
    }
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
          for (const row of this.rows(item.dataset.id)) {
            row.querySelector("a").textContent = conversation.title;
            this.label(row);
          }
          if (conversation.id === this.currentId()) this.onRenamed(conversation);
        } catch (error) {
          window.alert(error instanceof ApiError ? error.message : "The title could not be saved.");
        }
      }
      input.remove();
      item.classList.remove("is-renaming");
      link.focus();
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

  askDelete(item, returnTo) {
    this.deleting = item;
    // The title is quoted in a sentence of its own: a title with its own punctuation ("Hi! Who
    // are you?") inside the question read "…you?”?".
    this.dialogTitle.textContent = "Delete this conversation?";
    this.dialogText.textContent = `“${item.querySelector("a").textContent}” and its messages will be deleted; this cannot be undone.`;
    this.dialogError.hidden = true;
    this.dialog.showModal();
    this.dialog.addEventListener(
      "close",
      () => {
        if (returnTo.isConnected) returnTo.focus();
      },
      { once: true },
    );
  }

  async deleteConfirmed() {
    const item = this.deleting;
    if (!item) return;
    this.confirmDelete.disabled = true;
    try {
      const answer = await postForm(`/c/${item.dataset.id}/delete/`);
      const wasCurrent = item.dataset.id === this.currentId();
      for (const row of this.rows(item.dataset.id)) row.remove();
      this.showArchivedCount();
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

  searching() {
    return !this.results.hidden;
  }

  scheduleSearch() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.search(), SEARCH_DELAY_MS);
  }

  /** Results (archived ones among them, marked) replace the lists until the query is cleared. */
  async search() {
    clearTimeout(this.searchTimer);
    const query = this.searchInput.value.trim();
    const number = ++this.searchNumber;
    this.closeMenu(false);
    if (!query) {
      this.results.replaceChildren();
      this.showResults(false);
      this.searchStatus.hidden = true;
      return;
    }
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
    this.results.replaceChildren(...items);
    this.showResults(true);
    const none = items.length === 0;
    this.searchStatus.textContent = none ? "No conversations found." : "";
    this.searchStatus.hidden = !none;
  }

  showResults(shown) {
    this.results.hidden = !shown;
    this.list.hidden = shown;
    this.showArchivedCount();
  }

  // --- import ----------------------------------------------------------------------------------

  async importChosen() {
    const file = this.importFile.files[0];
    if (!file) return;
    this.importButton.disabled = true;
    this.importSkipped.replaceChildren();
    this.importSkipped.hidden = true;
    this.importStatus.textContent = `Importing ${file.name}…`;
    this.importStatus.hidden = false;
    try {
      const answer = await postFile("/import/", file);
      for (const conversation of answer.conversations) this.apply(conversation);
      const count = answer.imported;
      this.importStatus.textContent =
        `Imported ${count} conversation${count === 1 ? "" : "s"} from ${file.name}.` +
        (answer.skipped.length ? " Not everything could be kept:" : "");
      this.importSkipped.replaceChildren(
        ...answer.skipped.map(({ conversation, reason }) => {
          const line = document.createElement("li");
          line.textContent = `${conversation}: ${reason}`;
          return line;
        }),
      );
      this.importSkipped.hidden = answer.skipped.length === 0;
    } catch (error) {
      this.importStatus.textContent = `Nothing was imported. ${
        error instanceof ApiError ? error.message : "The file could not be sent."
      }`;
    } finally {
      this.announce(this.importStatus.textContent); // the page's one live region
      this.importButton.disabled = false;
      this.importFile.value = "";
    }
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
