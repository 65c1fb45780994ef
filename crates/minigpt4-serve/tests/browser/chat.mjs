// Drives the chat page in headless Chromium: upload an image, ask about it, watch the answer
// stream in, ask a follow-up, take a screenshot, reset.
//
//   node chat.mjs URL IMAGE SCREENSHOT
//
// CHROMIUM names the browser (default /usr/bin/chromium). Prints one JSON line with what it saw
// and exits 1 on the first failed check.
import { chromium } from "playwright-core";

const [url, image, screenshot] = process.argv.slice(2);
if (!url || !image || !screenshot) {
  console.error("usage: node chat.mjs URL IMAGE SCREENSHOT");
  process.exit(2);
}

function check(cond, msg) {
  if (!cond) throw new Error("check failed: " + msg);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const report = { turns: [] };
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => { if (m.type() === "error") problems.push("console error: " + m.text()); });
  page.setDefaultTimeout(30000);

  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("model-name").textContent !== "…");
  report.model = await page.textContent("#model-name");
  check(/fixture-qformer/.test(report.model), "model name shown: " + report.model);

  await page.setInputFiles("#file", image);
  await page.waitForSelector("#preview:not([hidden])");
  check(await page.evaluate(() => document.getElementById("preview").naturalWidth > 0), "the preview shows the image");

  await page.fill("#max-tokens", "40");

  // Asks `question` and samples the answer's text while it streams; returns the samples.
  async function ask(question, streamingShot) {
    const before = await page.locator('.msg.assistant[data-state="done"]').count();
    await page.fill("#prompt", question);
    await page.press("#prompt", "Enter");
    const samples = [];
    const deadline = Date.now() + 30000;
    for (;;) {
      const s = await page.evaluate(() => {
        const all = document.querySelectorAll(".msg.assistant");
        const last = all[all.length - 1];
        return last ? { state: last.dataset.state, text: last.querySelector(".text").textContent } : null;
      });
      if (s && s.text && samples[samples.length - 1] !== s.text) {
        samples.push(s.text);
        if (streamingShot && samples.length === 4 && s.state === "streaming") {
          await page.screenshot({ path: streamingShot });
          report.streamingScreenshot = streamingShot;
        }
      }
      if (s && s.state !== "streaming" && (await page.locator('.msg.assistant[data-state="done"]').count()) > before) break;
      const errors = await page.locator(".msg.error").count();
      check(errors === 0, "no error bubble: " + (errors ? await page.textContent(".msg.error") : ""));
      check(Date.now() < deadline, "the answer finished within 30 s");
      await page.waitForTimeout(15);
    }
    return samples;
  }

  // Two turns at least. The fixture model is random: an answer can end after a token or two, so
  // ask on until one streams visibly (several distinct partial texts), at most five turns.
  const questions = ["What is in this image?", "What colour is the cat?", "Tell me more about it."];
  const midStream = screenshot.replace(/\.png$/, "") + "-streaming.png";
  let streamed = false;
  for (let i = 0; i < 5 && (!streamed || i < 2); i++) {
    const samples = await ask(questions[Math.min(i, 2)], i === 1 ? midStream : null);
    const final = await page.evaluate(() => {
      const all = document.querySelectorAll(".msg.assistant");
      return all[all.length - 1].querySelector(".text").textContent;
    });
    report.turns.push({ partials: samples.length, answer: final });
    check(final.length > 0, "the answer is not empty");
    streamed ||= samples.length >= 3 && samples[samples.length - 1].length > samples[0].length;
  }
  check(streamed, "the answer appeared piece by piece: " + JSON.stringify(report.turns));

  const bubbles = await page.locator(".msg").count();
  check(bubbles === report.turns.length * 2, `user and assistant bubbles: ${bubbles}`);
  check((await page.locator(".msg.user img").count()) === 1, "the image is shown in the first user message");
  check(await page.locator(".msg.assistant .meta").first().isVisible(), "token counts shown");
  report.meta = await page.locator(".msg.assistant .meta").first().textContent();
  check(/prompt \+ \d+ new tokens/.test(report.meta), "usage shown: " + report.meta);

  await page.screenshot({ path: screenshot, fullPage: false });

  await page.click("#reset");
  check((await page.locator(".msg").count()) === 0, "reset empties the conversation");
  check(await page.isHidden("#preview"), "reset forgets the image");
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
