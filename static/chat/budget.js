// Today's tokens against the account's daily budget: the line under the composer, the notice
// once it is spent, and the wait for midnight after which sending is allowed again. The figures
// come from the page, from each message.done and from GET /budget/ (chat.views).

import { getJson } from "./api.js";

// setTimeout's longest wait (about 24.8 days); a day is far below it.
const LONGEST_TIMEOUT_MS = 2 ** 31 - 1;

export function budgetSentence(budget) {
  return `You have used today's budget of ${budget.budget} tokens; it resets at midnight (${budget.zone}).`;
}

export class BudgetDisplay {
  /** `onChange(budget)` hears each new set of figures, after they are shown. */
  constructor({ onChange }) {
    this.onChange = onChange;
    this.notice = document.getElementById("budget-notice");
    this.line = document.getElementById("budget"); // only when the account has a budget
    this.resetTimer = null;

    // This tab hears the end of its own conversation's answers only; answers elsewhere spend the
    // same budget, so it asks again when shown.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.refresh();
    });
    window.addEventListener("focus", () => this.refresh());
  }

  /** Shows `budget` (the server's figures) and, once it is spent, waits for it to reset. */
  set(budget) {
    clearTimeout(this.resetTimer);
    if (budget.exhausted) {
      const wait = Math.min(Math.max(0, new Date(budget.resets_at) - Date.now()) + 1000, LONGEST_TIMEOUT_MS);
      this.resetTimer = setTimeout(() => this.set({ ...budget, used: 0, reserved: 0, exhausted: false }), wait);
    }
    this.show(budget);
    this.onChange(budget);
  }

  /** Asks the server for today's figures (shown again, or a send refused for the budget). */
  async refresh() {
    try {
      const { budget } = await getJson("/budget/");
      this.set(budget);
    } catch {
      // Offline or signed out: the socket says so; the figures stay as they were.
    }
  }

  show(budget) {
    if (this.line && budget?.budget) {
      this.line.textContent = `Today: ${budget.used} of ${budget.budget} tokens used.`;
    }
    const spent = Boolean(budget?.exhausted);
    const sentence = spent ? budgetSentence(budget) : "";
    if (this.notice.textContent !== sentence) this.notice.textContent = sentence;
    this.notice.hidden = !spent;
  }
}
