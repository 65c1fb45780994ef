// The chat page drawing a MiniGPT-v2 grounded answer: upload an image, pick the [grounding] task,
// ask, and check the boxes are drawn over the image where the answer puts them.
//
//   node boxes.mjs URL IMAGE WIDTH HEIGHT SCREENSHOT
//
// The request goes to the real server (which must accept `task`), but the answer the page
// receives is replaced with a grounded one shaped exactly as the server streams it (`boxes` in
// the final chunk's delta): the test server's random-weight model never writes boxes. The server
// side of `boxes` is tested in Rust (chat.rs, server.rs). Prints one JSON line; exits 1 on the
// first failed check.
import { chromium } from "playwright-core";

const [url, image, width, height, screenshot] = process.argv.slice(2);
if (!url || !image || !width || !height || !screenshot) {
  console.error("usage: node boxes.mjs URL IMAGE WIDTH HEIGHT SCREENSHOT");
  process.exit(2);
}
const [W, H] = [Number(width), Number(height)];

function check(cond, msg) {
  if (!cond) throw new Error("check failed: " + msg);
}

// The answer and its boxes as the server sends them: grid 0–100 → image pixels.
const ANSWER = "<p>a cat</p> {<10><20><60><90>} sits next to <p>a bowl</p> {<65><70><95><95>}";
const px = (v, n) => (v * n) / 100;
const BOXES = [
  { label: "a cat", x1: px(10, W), y1: px(20, H), x2: px(60, W), y2: px(90, H) },
  { label: "a bowl", x1: px(65, W), y1: px(70, H), x2: px(95, W), y2: px(95, H) },
];

function sse(events) {
  return events.map((e) => "data: " + (typeof e === "string" ? e : JSON.stringify(e)) + "\n\n").join("");
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const report = {};
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => { if (m.type() === "error") problems.push("console error: " + m.text()); });
  page.setDefaultTimeout(30000);

  await page.route("**/v1/chat/completions", async (route) => {
    const body = JSON.parse(route.request().postData());
    report.task = body.task;
    const real = await route.fetch();
    report.serverStatus = real.status();
    const base = { id: "chatcmpl-test", object: "chat.completion.chunk", created: 0, model: "fixture", system_fingerprint: null };
    const chunk = (delta, finish) => ({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] });
    await route.fulfill({
      status: 200,
      headers: { "content-type": "text/event-stream" },
      body: sse([chunk({ role: "assistant", content: "" }, null), chunk({ content: ANSWER }, null),
                 chunk({ boxes: BOXES }, "stop"), "[DONE]"]),
    });
  });

  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("model-name").textContent !== "…");
  await page.setInputFiles("#file", image);
  await page.waitForSelector("#preview:not([hidden])");
  await page.selectOption("#task", "grounding");
  await page.fill("#max-tokens", "8");
  await page.fill("#prompt", "Describe this image in detail.");
  await page.press("#prompt", "Enter");
  await page.waitForSelector('.msg.assistant[data-state="done"] .grounded[data-boxes="2"]');
  check(report.task === "grounding", "the request carries the task: " + report.task);
  check(report.serverStatus === 200, "the server accepted the task: " + report.serverStatus);

  const drawn = await page.evaluate(() => {
    const g = document.querySelector(".msg.assistant .grounded");
    const img = g.querySelector("img");
    const svg = g.querySelector("svg");
    const ir = img.getBoundingClientRect(), sr = svg.getBoundingClientRect();
    return {
      text: document.querySelector(".msg.assistant .text").textContent,
      viewBox: svg.getAttribute("viewBox"),
      natural: [img.naturalWidth, img.naturalHeight],
      overlay: [Math.abs(ir.left - sr.left) < 1, Math.abs(ir.top - sr.top) < 1, Math.abs(ir.width - sr.width) < 1, Math.abs(ir.height - sr.height) < 1],
      rects: [...svg.querySelectorAll("rect")].map((r) => ({
        label: r.dataset.label, x: +r.getAttribute("x"), y: +r.getAttribute("y"),
        w: +r.getAttribute("width"), h: +r.getAttribute("height"), stroke: r.getAttribute("stroke"),
        screen: (() => { const b = r.getBoundingClientRect(); return [b.left - ir.left, b.top - ir.top, b.width, b.height].map((v) => v / ir.width); })(),
      })),
      labels: [...svg.querySelectorAll("text")].map((t) => t.textContent),
    };
  });
  report.drawn = drawn;
  check(drawn.text === "a cat sits next to a bowl", "the answer is shown without box markup: " + drawn.text);
  check(drawn.natural[0] === W && drawn.natural[1] === H, "the image is the uploaded one: " + drawn.natural);
  check(drawn.viewBox === `0 0 ${W} ${H}`, "the boxes are in image pixels: " + drawn.viewBox);
  check(drawn.overlay.every(Boolean), "the boxes lie over the image: " + drawn.overlay);
  check(drawn.rects.length === 2, "two boxes");
  for (const [i, b] of BOXES.entries()) {
    const r = drawn.rects[i];
    check(r.label === b.label && Math.abs(r.x - b.x1) < 0.01 && Math.abs(r.y - b.y1) < 0.01 &&
          Math.abs(r.w - (b.x2 - b.x1)) < 0.01 && Math.abs(r.h - (b.y2 - b.y1)) < 0.01, "box " + i + ": " + JSON.stringify(r));
    // On screen, relative to the image's width: where the grid says (3 px of stroke aside).
    const want = [b.x1 / W, (b.y1 / H) * (H / W), (b.x2 - b.x1) / W, ((b.y2 - b.y1) / H) * (H / W)];
    check(r.screen.every((v, k) => Math.abs(v - want[k]) < 0.03), "box " + i + " on screen: " + r.screen + " vs " + want);
  }
  check(drawn.rects[0].stroke !== drawn.rects[1].stroke, "one colour per label");
  check(drawn.labels.join("|") === "a cat|a bowl", "labels drawn: " + drawn.labels);

  await page.locator(".msg.assistant .grounded").screenshot({ path: screenshot });
  check(problems.length === 0, "no page errors: " + problems.join("; "));
  report.ok = true;
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
if (failed) {
  console.error(failed.stack || String(failed));
  process.exit(1);
}
