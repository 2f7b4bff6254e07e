// The light/dark theme: follows the system until the Theme button or the settings page picks one.
//
// A signed-in user's choice is kept with the account (chat.models.AccountSettings): base.html
// puts it on <html> as data-account-theme (and data-theme), so every device shows it from the
// first paint, and the Theme button saves it to the server. A visitor's choice stays in this
// browser. Either way it is copied to the key the Django admin's own theme script reads, so the
// admin opens in the same theme.
//
// A classic script in <head>, not a module: it must set data-theme before the first paint, or a
// page in the other theme would flash. The stylesheet keys its colours on data-theme.

(function () {
  const KEY = "chat-theme";
  const ADMIN_KEY = "theme"; // django/contrib/admin/static/admin/js/theme.js: "auto", "light", "dark"
  const root = document.documentElement;
  const systemDark = window.matchMedia("(prefers-color-scheme: dark)");
  const account = root.dataset.accountTheme; // undefined for a visitor; "system", "light", "dark"

  function store(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch {
      // Storage switched off: not remembered in this browser, still applied to this page.
    }
  }

  function saved() {
    if (account !== undefined) return account === "light" || account === "dark" ? account : null;
    try {
      const value = window.localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : null;
    } catch {
      return null; // storage switched off: follow the system
    }
  }

  let chosen = saved();

  function current() {
    return root.dataset.theme || (systemDark.matches ? "dark" : "light");
  }

  function apply(theme) {
    if (theme) root.dataset.theme = theme;
    else delete root.dataset.theme;
    // Stylesheets such as the code highlighting's are chosen by their media attribute.
    for (const link of document.querySelectorAll("link[data-scheme]")) {
      const scheme = link.dataset.scheme;
      if (!theme) link.media = `(prefers-color-scheme: ${scheme})`;
      else link.media = scheme === theme ? "all" : "not all";
    }
    const button = document.getElementById("theme-toggle");
    if (button) button.title = `Switch to the ${current() === "dark" ? "light" : "dark"} theme`;
    store(ADMIN_KEY, theme || "auto");
  }

  function csrfToken() {
    for (const part of document.cookie.split(";")) {
      const [name, ...value] = part.trim().split("=");
      if (name === "csrftoken") return decodeURIComponent(value.join("="));
    }
    return "";
  }

  function keepWithAccount(theme) {
    const body = new URLSearchParams({ theme });
    // Best effort: the page has switched already; a failure only means the next page forgets.
    fetch("/accounts/settings/theme/", {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken() },
      body,
      credentials: "same-origin",
    }).catch(() => {});
  }

  apply(chosen);

  document.addEventListener("DOMContentLoaded", () => {
    apply(chosen);
    const button = document.getElementById("theme-toggle");
    if (!button) return;
    button.addEventListener("click", () => {
      chosen = current() === "dark" ? "light" : "dark";
      if (account !== undefined) keepWithAccount(chosen);
      else store(KEY, chosen);
      apply(chosen);
    });
  });
  systemDark.addEventListener("change", () => apply(chosen));
})();
