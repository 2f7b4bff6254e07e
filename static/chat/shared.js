// The page of a shared link: the snapshot's messages, drawn by the chat's own renderer, read-only.
// No socket, no composer: the snapshot never changes.

import { copyCode, copyFrom } from "./markdown.js";
import { createView } from "./render.js";

const page = JSON.parse(document.getElementById("page-data").textContent);
const list = document.getElementById("messages");
const views = new Map();

for (const frame of page.messages) {
  const view = createView(frame, { readOnly: true });
  views.set(view.id, view);
  list.append(view.element);
  view.render();
}

list.addEventListener("click", async (event) => {
  const code = event.target.closest(".copy-button");
  if (code) copyCode(code);
  const button = event.target.closest(".copy-answer-button, .copy-message-button");
  const view = button && views.get(button.closest("article")?.dataset.id);
  if (!view) return;
  await copyFrom(button, view.text);
});
