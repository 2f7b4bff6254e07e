// Render scheduling and scroll-following for the message list. Views changed by frames are
// marked dirty; one requestAnimationFrame callback renders whatever changed, so a burst of deltas
// costs one render, and there is never more than one render per frame whatever the display's
// rate. While the reader is at the bottom the list follows the newest text; scrolled up, a "Jump
// to latest" button offers the way back.

import { RenderPace } from "./pace.js";

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
    this.pace = new RenderPace();
    this.followBottom = true;
    // A message posted in a frame's callback is delivered after that frame's style, layout and
    // paint: the time until then is what the render cost the main thread.
    this.costChannel = new MessageChannel();
    this.costChannel.port1.onmessage = ({ data }) => this.pace.measured(performance.now() - data);

    this.scroller.addEventListener("scroll", () => {
      this.followBottom = this.isAtBottom();
      this.updateJumpButton();
    });
    // Follows the bottom when the messages grow or the room for them changes (a render, the
    // composer growing, the window resizing). Resize observations are delivered after the frame's
    // layout and before its paint: reading sizes and scrolling here costs no layout of its own.
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

  /**
   * Renders `view` on the next frame or, for a delta (`streaming`), once the streaming interval
   * since the last render is over: at most ten renders a second, fewer when renders cost more
   * (pace.js).
   */
  schedule(view, { streaming = false } = {}) {
    this.dirty.add(view);
    if (this.frameRequested) return;
    const wait = streaming ? this.lastRender + this.pace.interval - performance.now() : 0;
    if (wait <= 0) {
      this.requestFrame();
    } else if (this.renderTimer === null) {
      this.renderTimer = setTimeout(() => this.requestFrame(), wait);
    }
  }

  /** One render on the next frame; a hidden tab gets no frames and renders once it is shown. */
  requestFrame() {
    clearTimeout(this.renderTimer);
    this.renderTimer = null;
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => this.renderDirty());
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
    if (this.dirty.size === 0) return;
    this.lastRender = performance.now();
    for (const view of this.dirty) view.render();
    this.dirty.clear();
    this.costChannel.port2.postMessage(this.lastRender);
    // No scroll here: reading the list's height right after the writes forced a layout on every
    // render (a third of the main thread while streaming). The ResizeObserver above follows the
    // growth after the frame's own layout, before its paint.
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
