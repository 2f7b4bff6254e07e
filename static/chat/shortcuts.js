// Keyboard shortcuts of the chat page, and the dialog that lists them (`?`).
//
// One table says what each shortcut is, its keys and its description; the key handler and the
// dialog both read it. The keys follow ChatGPT's where it has one, and avoid what browsers keep
// for themselves (Ctrl+T, Ctrl+N, Ctrl+W, Ctrl+L…): Ctrl+Shift+O for a new chat, Shift+Esc to
// focus the message box, Ctrl+Shift+C to copy the last answer, Ctrl+K to search (a page may
// take it from the browser's own search). On a Mac, ⌘ works where Ctrl is written.

const MAC = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
const MOD = MAC ? "⌘" : "Ctrl";

/**
 * Each shortcut: `action` (a key of the actions given to installShortcuts), `keys` (as shown),
 * and `matches(event)`. `anywhere`: also while typing in a field; otherwise only outside one,
 * where a plain key such as `?` cannot be meant as text.
 */
export const SHORTCUTS = [
  {
    action: "newChat",
    label: "New chat",
    keys: [MOD, "Shift", "O"],
    anywhere: true,
    matches: (event) => modifier(event) && event.shiftKey && event.code === "KeyO",
  },
  {
    action: "search",
    label: "Search conversations",
    keys: [MOD, "K"],
    anywhere: true,
    matches: (event) => modifier(event) && !event.shiftKey && event.code === "KeyK",
  },
  {
    action: "focusComposer",
    label: "Focus the message box",
    keys: ["Shift", "Esc"],
    anywhere: true,
    matches: (event) => event.shiftKey && !modifier(event) && event.key === "Escape",
  },
  {
    action: "stop",
    label: "Stop the answer being written",
    keys: ["Esc"],
    anywhere: true,
    matches: (event) => !event.shiftKey && !modifier(event) && event.key === "Escape",
  },
  {
    action: "copyLastAnswer",
    label: "Copy the last answer",
    keys: [MOD, "Shift", "C"],
    anywhere: true,
    matches: (event) => modifier(event) && event.shiftKey && event.code === "KeyC",
  },
  {
    action: "showShortcuts",
    label: "Show these shortcuts",
    keys: ["?"],
    anywhere: false,
    matches: (event) => event.key === "?" && !modifier(event),
  },
  {
    // The same while typing, where `?` is text; listed on the row above.
    action: "showShortcuts",
    label: "",
    keys: [MOD, "/"],
    anywhere: true,
    matches: (event) => modifier(event) && event.code === "Slash",
  },
];

function modifier(event) {
  return MAC ? event.metaKey && !event.ctrlKey : event.ctrlKey && !event.metaKey;
}

function typingIn(target) {
  return target instanceof HTMLElement && (target.isContentEditable || target.matches("input, textarea, select"));
}

/**
 * Listens for the shortcuts; `actions[name]()` returns false when it did nothing (e.g. Stop with
 * no answer being written), and then the key keeps its usual meaning.
 */
export function installShortcuts(actions) {
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.isComposing || event.altKey) return;
    // An open modal dialog has the keyboard (Esc closes it, as the browser does).
    if (document.querySelector("dialog[open]")) return;
    for (const shortcut of SHORTCUTS) {
      if (!shortcut.matches(event)) continue;
      if (!shortcut.anywhere && typingIn(event.target)) return;
      if (actions[shortcut.action]() === false) return;
      event.preventDefault();
      return;
    }
  });
}

/** Fills the shortcuts dialog's list from the table (once). */
export function fillShortcutsDialog(list) {
  if (list.childElementCount) return;
  let keys = null;
  for (const shortcut of SHORTCUTS) {
    if (shortcut.label) {
      const row = document.createElement("div");
      row.className = "shortcut";
      const name = document.createElement("dt");
      name.textContent = shortcut.label;
      keys = document.createElement("dd");
      row.append(name, keys);
      list.append(row);
    } else {
      keys.append(" or ");
    }
    shortcut.keys.forEach((key, index) => {
      if (index) keys.append(" + ");
      const kbd = document.createElement("kbd");
      kbd.textContent = key;
      keys.append(kbd);
    });
  }
}
