// Render scheduling and scroll-following for the message list. Views changed by frames are
// marked dirty; one requestAnimationFrame callback (or, while an answer streams, one timer per
// interval) renders whatever changed, so a burst of deltas costs one render. While the reader is
// at the bottom the list follows the newest text; scrolled up, a "Jump to latest" button offers
// the way back.

// While an answer streams, its deltas are rendered at most this often. Each render costs the
// browser a frame of style, layout and paint (and a scroll) however little changed: rendering
// every delta frame (~30 a second from a fast model) cost about three times as much main thread
// as rendering at this pace (docs/benchmarks.md). Anything else renders on the next frame.
const STREAMING_RENDER_INTERVAL = 100;

// Closer to the bottom than this (in CSS pixels) counts as at the bottom.
const BOTTOM_SLACK = 48;

export class Follower {
  /** `scroller` scrolls, `messages` holds the views' elements, `jump` is the Jump to latest button. */
  constructor({ scroller, messages, jump }) {
    this.scroller = scroller;
    this.jump = jump;
    this.dirty = new Set();
    this.frameRequested = false;
    this.renderTimer = null;
    this.lastRender = -Infinity;
    this.followBottom = true;

    this.scroller.addEventListener("scroll", () => {
      this.followBottom = this.isAtBottom();
      this.updateJumpButton();
    });
    // Follows the bottom when the messages grow or the room for them changes (the composer
    // growing, the window resizing). Resize observations are delivered after layout, so reading
    // sizes here costs no extra layout; while following, renderDirty() has usually scrolled already.
    const followLatest = new ResizeObserver(() => {
      if (this.followBottom) this.scrollToBottom();
      this.updateJumpButton();
    });
    followLatest.observe(scroller);
    followLatest.observe(messages);
    this.jump.addEventListener("click", () => {
      // Not a smooth scroll: its scroll events would read as the reader scrolling, and the answer
      // can grow past the target before it lands.
      this.follow();
      this.scrollToBottom();
      this.jump.hidden = true;
    });
  }

  /** Renders `view` on the next frame or, for a delta (`streaming`), once the interval is over. */
  schedule(view, { streaming = false } = {}) {
    this.dirty.add(view);
    if (this.frameRequested) return;
    if (!streaming || document.hidden) {
      // A hidden tab gets no animation frames: it renders once, when it is shown again.
      this.frameRequested = true;
      requestAnimationFrame(() => this.renderDirty());
    } else if (this.renderTimer === null) {
      // A task rather than a frame callback: the scroll below then has its scroll event dispatched
      // in the frame that paints the render, where from a frame callback it would need one more.
      const wait = Math.max(0, this.lastRender + STREAMING_RENDER_INTERVAL - performance.now());
      this.renderTimer = setTimeout(() => this.renderDirty(), wait);
    }
  }

  /** `view` left the page: nothing to render for it. */
  forget(view) {
    this.dirty.delete(view);
  }

  /** Follow the newest text again (something was sent or added). */
  follow() {
    this.followBottom = true;
  }

  renderDirty() {
    this.frameRequested = false;
    clearTimeout(this.renderTimer);
    this.renderTimer = null;
    if (this.dirty.size === 0) return;
    this.lastRender = performance.now();
    for (const view of this.dirty) view.render();
    this.dirty.clear();
    // Sizes are read once, after all the writes: one layout, which the frame then reuses. The
    // ResizeObserver follows growth that comes from anywhere else (a window resize, images).
    if (this.followBottom) this.scrollToBottom();
  }

  isAtBottom() {
    const { scrollTop, scrollHeight, clientHeight } = this.scroller;
    return scrollHeight - scrollTop - clientHeight < BOTTOM_SLACK;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  updateJumpButton() {
    const hidden = this.followBottom || this.isAtBottom();
    if (this.jump.hidden !== hidden) this.jump.hidden = hidden;
  }
}
