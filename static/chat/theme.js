// The light/dark theme: follows the system until the Theme button picks one, which is remembered.
//
// A classic script in <head>, not a module: it must set data-theme before the first paint, or a
// page in the other theme would flash. The stylesheet keys its colours on data-theme.

(function () {
  const KEY = "chat-theme";
  const root = document.documentElement;
  const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

  function saved() {
    try {
      const value = window.localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : null;
    } catch {
      return null; // storage switched off: follow the system
    }
  }

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
  }

  apply(saved());

  document.addEventListener("DOMContentLoaded", () => {
    apply(saved());
    const button = document.getElementById("theme-toggle");
    if (!button) return;
    button.addEventListener("click", () => {
      const next = current() === "dark" ? "light" : "dark";
      try {
        window.localStorage.setItem(KEY, next);
      } catch {
        // Not remembered, but still switched for this page.
      }
      apply(next);
    });
  });
  systemDark.addEventListener("change", () => apply(saved()));
})();
