// How often a streaming answer is rendered (follow.js schedules the renders). Each render costs
// the browser a frame of style, layout and paint, and a second frame for the scroll event of the
// list following the text, however little text it adds: on a slow machine ~12-15 ms for both,
// so ten renders a second took ~15 % of the main thread and streaming a long answer cost 15 x
// one render of its final text (docs/benchmarks.md). The pace gives a streaming answer a share
// of the main thread instead of a rate: the least time between two renders is the measured cost
// of the last renders divided by STREAMING_SHARE, within STREAMING_RENDER_INTERVAL and
// STREAMING_RENDER_INTERVAL_MAX. A fast machine still renders ten times a second; a slow machine
// or a busy tab renders less often instead of spending itself on frames. No DOM here: the Node
// tests (tests/js/pace.test.mjs) feed it costs.

export const STREAMING_RENDER_INTERVAL = 100;
export const STREAMING_RENDER_INTERVAL_MAX = 500;
export const STREAMING_SHARE = 1 / 40;

// How much the latest render's cost moves the estimate: a lone slow frame (a code block
// highlighted, a chunk laid out) lengthens the next intervals a little, a lasting cost fully.
const COST_WEIGHT = 0.25;

// No sample counts for more than twice the cost that gives the longest interval (enough for a
// lasting heavy cost to reach it): one render far over the budget (the first of a long
// conversation, an answer's final render) must not slow the next answer down for long.
const LARGEST_SAMPLE = 2 * STREAMING_RENDER_INTERVAL_MAX * STREAMING_SHARE;

export class RenderPace {
  constructor() {
    this.cost = 0; // ms of main thread per render, a moving average
  }

  /** A render took `cost` ms of main thread, from its frame's callback to the end of its paint. */
  measured(cost) {
    const sample = Math.min(Math.max(cost, 0), LARGEST_SAMPLE);
    this.cost += COST_WEIGHT * (sample - this.cost);
  }

  /** The least time, in ms, from one render of a streaming answer to the next. */
  get interval() {
    const interval = this.cost / STREAMING_SHARE;
    return Math.min(STREAMING_RENDER_INTERVAL_MAX, Math.max(STREAMING_RENDER_INTERVAL, interval));
  }
}
