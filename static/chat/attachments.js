// Attachments in the browser (docs/protocol.md, "Uploads"): the composer's tray of files to send,
// a sent message's files in the conversation, and the ones an edited message keeps.
//
// Bytes travel over HTTP, never the socket: each file is uploaded (POST /uploads/) as soon as it
// is picked, dropped or pasted, and chat.send then carries only the ids. The page's policy allows
// no inline style, so nothing here sets one: the progress bar is a <progress>, an image's box comes
// from its width and height attributes, and every look is in chat.css ("Attachments").

import { csrfToken, postForm } from "./api.js";
import { element, icon } from "./elements.js";

// The server refuses more than this many with one message; the tray says so first.
export const MAX_ATTACHMENTS = 10;

// A page with a folded corner, drawn for this site (the Attach button's paperclip is in chat.html).
const PAGE = "M6 2.8h8l4 4V21.2H6zM14 2.8v4h4";

const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** "312 bytes", "48 KB", "1.5 MB": binary units, as file managers show them. */
export function formatSize(bytes) {
  if (bytes < 1024) return `${whole.format(bytes)} ${bytes === 1 ? "byte" : "bytes"}`;
  const units = ["KB", "MB", "GB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${(value < 10 ? decimals : whole).format(value)} ${units[unit]}`;
}

/** "PDF", "TXT": the name's extension, for a file's chip where an image would show itself. */
function extension(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 && name.length - dot <= 5 ? name.slice(dot + 1).toUpperCase() : "";
}

/** The file's extension in a square ("PDF"), or a page when its name has none. */
function fileBadge(name) {
  const badge = element("span", "attachment-icon");
  badge.setAttribute("aria-hidden", "true");
  const shown = extension(name);
  badge.append(shown ? element("span", "attachment-ext", shown) : icon(PAGE));
  return badge;
}

function chipLabel(name, size) {
  const label = element("span", "attachment-label");
  const shownName = element("span", "attachment-name", name);
  shownName.title = name; // the whole name, where the chip ends it in "…"
  label.append(shownName, element("span", "attachment-size", formatSize(size)));
  return { label, shownName, shownSize: label.lastChild };
}

function removeButton(name) {
  const remove = element("button", "icon-button attachment-remove");
  remove.type = "button";
  remove.setAttribute("aria-label", `Remove ${name}`);
  remove.title = `Remove ${name}`;
  return remove;
}

// --- uploading -------------------------------------------------------------------------------

/** Why an upload failed, in a sentence, from the endpoint's JSON error or else its status. */
function uploadError(xhr) {
  const message = xhr.response?.error?.message;
  if (message) return message;
  // The session ended: login_required redirected the POST to the login page.
  if (xhr.responseURL && new URL(xhr.responseURL).pathname.startsWith("/accounts/login")) {
    return "Your session has ended: log in again to attach files.";
  }
  if (xhr.status === 413) return "The file is too large to upload.";
  if (xhr.status === 403) return "The upload was refused: reload the page and try again.";
  return `The upload failed (the server answered ${xhr.status}).`;
}

/**
 * Sends `file` to POST /uploads/. XMLHttpRequest rather than fetch: only it reports how much of a
 * request body has gone (`upload.onprogress`), which is what a progress bar for a large file needs.
 */
function upload(file, { onProgress, onDone, onFailed }) {
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/uploads/");
  xhr.setRequestHeader("X-CSRFToken", csrfToken());
  xhr.responseType = "json";
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) onProgress(event.loaded / event.total);
  });
  xhr.addEventListener("load", () => {
    if (xhr.status === 201 && xhr.response?.id) onDone(xhr.response);
    else onFailed(uploadError(xhr));
  });
  xhr.addEventListener("error", () => onFailed("The upload failed: the server could not be reached."));
  xhr.addEventListener("timeout", () => onFailed("The upload took too long; try again."));
  const body = new FormData();
  body.append("file", file, file.name);
  xhr.send(body);
  return xhr;
}

/** Deletes an upload that will not be sent; one left behind is swept by the server a day later. */
function discard(id) {
  postForm(`/uploads/${id}/delete/`).catch(() => {});
}

// --- the composer's tray ---------------------------------------------------------------------

/** One file in the tray: uploading, ready (the server's attachment in `attachment`) or failed. */
class TrayItem {
  constructor(file, error = "") {
    this.file = file;
    this.name = file.name;
    this.size = file.size;
    this.state = error ? "failed" : "uploading";
    this.error = error;
    this.attachment = null;
    this.request = null;
    // A picture of the file itself, from memory: shown before the upload is done.
    this.preview = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;

    this.element = element("li", "attachment-chip");
    if (this.preview) {
      const thumb = element("img", "attachment-thumb");
      thumb.alt = ""; // the name is beside it
      thumb.src = this.preview;
      // An image the browser cannot show (HEIC, a broken file) shows as a file instead.
      thumb.addEventListener("error", () => thumb.replaceWith(fileBadge(this.name)), { once: true });
      this.element.append(thumb);
    } else {
      this.element.append(fileBadge(this.name));
    }
    const { label, shownName, shownSize } = chipLabel(this.name, this.size);
    this.shownName = shownName;
    this.shownSize = shownSize;
    this.removeButton = removeButton(this.name);
    this.progress = element("progress", "attachment-progress");
    this.progress.max = 100;
    this.progress.value = 0;
    this.progress.setAttribute("aria-label", `Uploading ${this.name}`);
    this.errorLine = element("p", "attachment-error");
    this.element.append(label, this.removeButton, this.progress, this.errorLine);
    this.render();
  }

  render() {
    this.element.dataset.state = this.state;
    this.progress.hidden = this.state !== "uploading";
    this.errorLine.hidden = this.state !== "failed";
    if (this.state === "failed" && this.errorLine.textContent !== this.error) {
      // Announced as it appears, next to the file it is about.
      this.errorLine.setAttribute("role", "alert");
      this.errorLine.textContent = this.error;
    }
  }

  /** The server's answer: what it stored (an image re-encoded, a GIF as PNG) is what is shown. */
  uploaded(attachment) {
    this.state = "ready";
    this.attachment = attachment;
    this.request = null;
    this.shownName.textContent = attachment.name;
    this.shownName.title = attachment.name;
    this.shownSize.textContent = formatSize(attachment.size);
    this.render();
  }

  failed(message) {
    this.state = "failed";
    this.error = message;
    this.request = null;
    this.render();
  }

  /** Gone from the page for good (removed, or sent and acknowledged). */
  forget() {
    this.request?.abort();
    this.request = null;
    if (this.preview) URL.revokeObjectURL(this.preview);
    this.preview = null;
  }
}

/**
 * The files picked, dropped or pasted for the next message. `onChange()` is called whenever Send's
 * readiness may have changed; `announce(text)` tells a screen reader when the uploads are done.
 * The tray is emptied like the text box: `take()` at Send, `giveBack()` if the server refuses the
 * message, `release()` once it acknowledges it.
 */
export class AttachmentTray {
  constructor({ button, input, list, status, dropHint, textarea, onChange, announce }) {
    this.button = button;
    this.input = input;
    this.list = list;
    // Send's description (chat.html): why it waits. Not a live region of its own: the page's
    // announcer says when the wait is over, and each failed file's error is an alert.
    this.status = status;
    this.onChange = onChange;
    this.announce = announce;
    this.items = [];
    this.taken = []; // sent with the message awaiting the server's answer
    this.pasted = 0;

    button.addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = ""; // the same file can be picked again
    });
    textarea.addEventListener("paste", (event) => this.paste(event));
    list.addEventListener("click", (event) => {
      const remove = event.target.closest(".attachment-remove");
      const item = remove && this.items.find((candidate) => candidate.removeButton === remove);
      if (item) this.remove(item);
    });
    this.watchDrops(dropHint);
    this.show();
  }

  /** True while a file is still uploading: Send waits for it. */
  get busy() {
    return this.items.some((item) => item.state === "uploading");
  }

  get ready() {
    return this.items.filter((item) => item.state === "ready");
  }

  /** Adds files and starts their uploads; past MAX_ATTACHMENTS a file's chip says why it is not sent. */
  add(files) {
    for (const file of files) {
      const counted = this.items.filter((item) => item.state !== "failed").length;
      const refusal = counted >= MAX_ATTACHMENTS ? `At most ${MAX_ATTACHMENTS} files go with one message.` : "";
      const item = new TrayItem(file, refusal);
      this.items.push(item);
      this.list.append(item.element);
      if (item.state === "uploading") this.start(item);
    }
    this.update();
  }

  start(item) {
    item.request = upload(item.file, {
      onProgress: (fraction) => {
        item.progress.value = Math.round(fraction * 100);
      },
      onDone: (attachment) => {
        item.uploaded(attachment);
        this.update();
        if (!this.busy) this.announce(`${attachment.name} uploaded; the files are ready to send.`);
      },
      onFailed: (message) => {
        item.failed(message);
        this.update();
      },
    });
  }

  remove(item) {
    const index = this.items.indexOf(item);
    if (index < 0) return;
    const hadFocus = item.element.contains(document.activeElement);
    this.items.splice(index, 1);
    item.element.remove();
    if (item.state === "ready") discard(item.attachment.id);
    item.forget();
    if (hadFocus) {
      // Focus stays in the tray for a keyboard user removing one after another.
      const neighbour = this.items[index] || this.items[index - 1];
      (neighbour ? neighbour.removeButton : this.button).focus();
    }
    this.update();
  }

  /** The uploaded files, out of the tray for a chat.send; failed and unfinished ones stay. */
  take() {
    const taken = this.ready;
    this.items = this.items.filter((item) => item.state !== "ready");
    for (const item of taken) item.element.remove();
    this.taken = taken;
    this.update();
    return taken;
  }

  /** A refused message's files come back, ahead of any added since. */
  giveBack(items) {
    this.taken = [];
    if (!items?.length) return;
    this.items = [...items, ...this.items];
    this.list.prepend(...items.map((item) => item.element));
    this.update();
  }

  /** The server took the message: the previews of its files can go. */
  release() {
    for (const item of this.taken) item.forget();
    this.taken = [];
  }

  update() {
    this.show();
    this.onChange();
  }

  show() {
    this.list.hidden = this.items.length === 0;
    const uploading = this.items.filter((item) => item.state === "uploading").length;
    let sentence = "";
    if (uploading === 1) sentence = "Uploading 1 file; Send waits until it is done.";
    else if (uploading > 1) sentence = `Uploading ${uploading} files; Send waits until they are done.`;
    if (this.status.textContent !== sentence) this.status.textContent = sentence;
  }

  /** An image pasted into the message box is attached; text pasted with it is pasted as usual. */
  paste(event) {
    const data = event.clipboardData;
    const files = [...(data?.files || [])];
    if (!files.length) return;
    if (!data.types.includes("text/plain")) event.preventDefault();
    // Browsers call every pasted image "image.png": each gets a name of its own, so that two can
    // be told apart (and removed) by name. A copied file keeps its own.
    this.add(
      files.map((file) => {
        if (!file.type.startsWith("image/")) return file;
        this.pasted += 1;
        const type = file.type.split("/")[1].split("+")[0];
        return new File([file], `Pasted image ${this.pasted}.${type === "jpeg" ? "jpg" : type}`, { type: file.type });
      }),
    );
  }

  /** Files dragged over any part of the page show the hint; dropped anywhere, they are attached. */
  watchDrops(hint) {
    let depth = 0; // dragenter and dragleave come in pairs for every element crossed
    const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
    const show = (shown) => {
      hint.hidden = !shown;
      document.body.classList.toggle("is-dropping", shown);
    };
    document.addEventListener("dragenter", (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      depth += 1;
      show(true);
    });
    document.addEventListener("dragover", (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault(); // without it the browser would open the file in place of the page
      event.dataTransfer.dropEffect = "copy";
    });
    document.addEventListener("dragleave", (event) => {
      if (!carriesFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) show(false);
    });
    document.addEventListener("drop", (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      depth = 0;
      show(false);
      this.add([...event.dataTransfer.files]);
    });
  }
}

// --- a message's attachments in the conversation ---------------------------------------------

/** The full-size view of an image, one dialog for the page, made the first time it is needed. */
class ImageViewer {
  build() {
    this.dialog = element("dialog", "image-viewer");
    const figure = element("figure", "image-viewer-figure");
    this.image = element("img", "image-viewer-image");
    this.caption = element("figcaption", "image-viewer-caption");
    figure.append(this.image, this.caption);
    this.download = element("a", "button-quiet", "Download");
    this.close = element("button", "button-quiet", "Close");
    this.close.type = "button";
    const bar = element("div", "dialog-buttons");
    bar.append(this.download, this.close);
    this.dialog.append(figure, bar);
    this.close.addEventListener("click", () => this.dialog.close());
    // A click on the backdrop (the dialog box itself, outside its content) closes it too.
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.dialog.close();
    });
    this.dialog.addEventListener("close", () => {
      this.image.removeAttribute("src");
      this.opener?.focus();
    });
    document.body.append(this.dialog);
  }

  open(attachment, opener) {
    if (!this.dialog) this.build();
    this.opener = opener;
    this.dialog.setAttribute("aria-label", attachment.name);
    this.image.alt = attachment.name;
    if (attachment.width && attachment.height) {
      this.image.width = attachment.width;
      this.image.height = attachment.height;
    } else {
      this.image.removeAttribute("width");
      this.image.removeAttribute("height");
    }
    this.image.src = attachment.url;
    const size = attachment.width ? `${attachment.width} × ${attachment.height} · ` : "";
    this.caption.textContent = `${attachment.name} · ${size}${formatSize(attachment.size)}`;
    this.download.href = attachment.url;
    this.download.download = attachment.name;
    this.dialog.showModal();
    this.close.focus();
  }
}

const viewer = new ImageViewer();

function imageThumbnail(attachment) {
  const link = element("a", "attachment-image-link");
  link.href = attachment.url;
  link.title = `${attachment.name} (${formatSize(attachment.size)})`;
  const image = element("img", "attachment-image");
  image.alt = attachment.name; // the link's name
  image.decoding = "async";
  if (attachment.width && attachment.height) {
    // The box is reserved before the image arrives: the conversation does not jump.
    image.width = attachment.width;
    image.height = attachment.height;
  }
  image.src = attachment.url;
  link.append(image);
  link.addEventListener("click", (event) => {
    // A new tab or window (a modified click) opens the file itself, as a link does.
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    viewer.open(attachment, link);
  });
  return link;
}

function fileChip(attachment) {
  // Without a URL (a page where the files cannot be fetched) the chip only names the file.
  const chip = element(attachment.url ? "a" : "span", "attachment-file");
  if (attachment.url) {
    chip.href = attachment.url;
    chip.download = attachment.name;
  }
  chip.append(fileBadge(attachment.name), chipLabel(attachment.name, attachment.size).label);
  return chip;
}

/** A sent message's attachments: images as thumbnails that open full size, files as downloads. */
export function messageAttachments(attachments) {
  const list = element("ul", "message-attachments");
  list.setAttribute("aria-label", "Attachments");
  list.hidden = !attachments?.length;
  for (const attachment of attachments || []) {
    const item = element("li", `message-attachment is-${attachment.kind}`);
    item.append(attachment.kind === "image" && attachment.url ? imageThumbnail(attachment) : fileChip(attachment));
    list.append(item);
  }
  return list;
}

/**
 * An edited message's attachments, each with a remove button. `keep` (ids) restores a refused
 * edit's choice; by default all are kept.
 */
export class EditorAttachments {
  constructor(attachments, keep = null) {
    this.all = attachments || [];
    this.kept = new Set(keep ?? this.all.map((attachment) => attachment.id));
    this.element = element("ul", "attachment-tray editor-attachments");
    this.element.setAttribute("aria-label", "Attachments");
    for (const attachment of this.all) {
      if (!this.kept.has(attachment.id)) continue;
      const chip = element("li", "attachment-chip");
      chip.dataset.state = "ready";
      if (attachment.kind === "image" && attachment.url) {
        const thumb = element("img", "attachment-thumb");
        thumb.alt = "";
        thumb.src = attachment.url;
        chip.append(thumb);
      } else {
        chip.append(fileBadge(attachment.name));
      }
      const remove = removeButton(attachment.name);
      remove.addEventListener("click", () => this.remove(attachment, chip));
      chip.append(chipLabel(attachment.name, attachment.size).label, remove);
      this.element.append(chip);
    }
    this.element.hidden = this.kept.size === 0;
  }

  remove(attachment, chip) {
    const next = chip.nextElementSibling || chip.previousElementSibling;
    this.kept.delete(attachment.id);
    chip.remove();
    this.element.hidden = this.kept.size === 0;
    // Focus stays on a remove button, or goes back to the text being edited.
    (next?.querySelector(".attachment-remove") || this.element.closest("form")?.querySelector("textarea"))?.focus();
  }

  /** The ids chat.edit should carry: undefined when none was removed (the server keeps them). */
  selection() {
    return this.kept.size === this.all.length ? undefined : this.all.map((a) => a.id).filter((id) => this.kept.has(id));
  }
}
