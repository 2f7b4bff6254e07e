// The pace of a streaming answer's renders (static/chat/pace.js), fed render costs as follow.js
// measures them. Run with `node --test tests/js/` (make test, make test-fast).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  RenderPace,
  STREAMING_RENDER_INTERVAL,
  STREAMING_RENDER_INTERVAL_MAX,
  STREAMING_SHARE,
} from "../../static/chat/pace.js";

function paced(costs) {
  const pace = new RenderPace();
  for (const cost of costs) pace.measured(cost);
  return pace;
}

test("before any render, and while renders are cheap, an answer renders ten times a second", () => {
  assert.equal(new RenderPace().interval, STREAMING_RENDER_INTERVAL);
  assert.equal(paced(Array(50).fill(1)).interval, STREAMING_RENDER_INTERVAL);
});

test("renders that cost more come less often, so that they take their share of the main thread", () => {
  const pace = paced(Array(50).fill(8));
  assert.ok(Math.abs(pace.interval - 8 / STREAMING_SHARE) < 1, pace.interval);
  assert.ok(pace.interval > STREAMING_RENDER_INTERVAL && pace.interval < STREAMING_RENDER_INTERVAL_MAX);
});

test("however slow the renders or busy the tab, the text moves at least twice a second", () => {
  assert.equal(paced(Array(50).fill(400)).interval, STREAMING_RENDER_INTERVAL_MAX);
});

test("one render far over the budget slows the next few a little, not the rest of the answer", () => {
  const pace = paced([...Array(50).fill(2), 2000]);
  assert.ok(pace.interval < STREAMING_RENDER_INTERVAL_MAX, pace.interval);
  for (let render = 0; render < 12; render += 1) pace.measured(2);
  assert.equal(pace.interval, STREAMING_RENDER_INTERVAL);
});

test("the pace follows the cost back down once renders are cheap again", () => {
  const pace = paced(Array(50).fill(400));
  for (let render = 0; render < 30; render += 1) pace.measured(1);
  assert.equal(pace.interval, STREAMING_RENDER_INTERVAL);
});
