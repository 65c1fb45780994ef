// The MiniGPT-4 chat page. It keeps the conversation as OpenAI messages and sends all of it with
// every question (the server encodes each image once and caches it by content), streaming the
// answer from POST /v1/chat/completions.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model-name"), status: $("server-status"), drop: $("drop"), file: $("file"),
  preview: $("preview"), dropHint: $("drop-hint"), imageNote: $("image-note"), clearImage: $("clear-image"),
  temperature: $("temperature"), beams: $("beams"), topP: $("top-p"), maxTokens: $("max-tokens"), task: $("task"),
  reset: $("reset"), log: $("log"), empty: $("empty"), composer: $("composer"), prompt: $("prompt"),
  send: $("send"), stop: $("stop"),
};

const state = {
  model: null,
  limits: { max_body_bytes: 20 * 1024 * 1024, max_tokens: 1024 },
  history: [],          // OpenAI messages sent so far (with their images)
  pendingImage: null,   // data URL to attach to the next question
  controller: null,     // AbortController of the answer being streamed
};

function setStatus(text, bad = false) {
  els.status.textContent = text;
  els.status.classList.toggle("bad", bad);
}

async function loadServerInfo() {
  try {
    const r = await fetch("/health");
    const h = await r.json();
    state.model = h.model;
    els.model.textContent = h.model + " · " + h.template;
    if (h.limits) {
      state.limits = h.limits;
      els.maxTokens.max = h.limits.max_tokens;
      els.maxTokens.value = Math.min(Number(els.maxTokens.value), h.limits.max_tokens);
    }
    setStatus(r.ok ? "ready" : h.status, !r.ok);
  } catch (e) {
    setStatus("server unreachable", true);
  }
}

// ---------- image ----------

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = () => reject(fr.error);
    fr.readAsDataURL(blob);
  });
}

// Re-encodes an image too big for the request limit as a JPEG of at most 2048 px a side.
async function shrink(dataUrl) {
  const img = new Image();
  await new Promise((ok, fail) => { img.onload = ok; img.onerror = () => fail(new Error("the browser cannot decode this image")); img.src = dataUrl; });
  const scale = Math.min(1, 2048 / Math.max(img.naturalWidth, img.naturalHeight));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.9);
}

async function useFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`“${file.name}” is not an image (${file.type}).`);
    return;
  }
  try {
    let url = await readAsDataURL(file);
    // Base64 grows the bytes by a third; keep well under the server's body limit.
    if (url.length > state.limits.max_body_bytes * 0.6) {
      url = await shrink(url);
    }
    state.pendingImage = url;
    renderImagePanel(file.name);
  } catch (e) {
    showError(`Cannot read “${file.name}”: ${e.message || e}`);
  }
}

function renderImagePanel(name) {
  const url = state.pendingImage || lastImageInHistory();
  els.preview.hidden = !url;
  els.dropHint.hidden = !!url;
  if (url) els.preview.src = url;
  els.clearImage.hidden = !state.pendingImage;
  if (state.pendingImage) {
    els.imageNote.textContent = (name ? name + ": " : "") + "goes with your next message. Drop another to replace it.";
  } else if (url) {
    els.imageNote.textContent = "In the conversation. Drop another image to add it.";
  } else {
    els.imageNote.textContent = "";
  }
}

function lastImageInHistory() {
  for (let i = state.history.length - 1; i >= 0; i--) {
    const c = state.history[i].content;
    if (Array.isArray(c)) {
      for (let j = c.length - 1; j >= 0; j--) if (c[j].type === "image_url") return c[j].image_url.url;
    }
  }
  return null;
}

els.drop.addEventListener("click", () => els.file.click());
els.drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); els.file.click(); } });
els.file.addEventListener("change", () => { useFile(els.file.files[0]); els.file.value = ""; });
els.drop.addEventListener("dragover", (e) => { e.preventDefault(); els.drop.classList.add("over"); });
els.drop.addEventListener("dragleave", () => els.drop.classList.remove("over"));
els.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  els.drop.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) { e.preventDefault(); useFile(item.getAsFile()); }
});
els.clearImage.addEventListener("click", () => { state.pendingImage = null; renderImagePanel(); });

// ---------- controls ----------

function bindOutput(input, out, digits) {
  const update = () => { $(out).textContent = Number(input.value).toFixed(digits); };
  input.addEventListener("input", update);
  update();
}
bindOutput(els.temperature, "temperature-value", 2);
bindOutput(els.beams, "beams-value", 0);
bindOutput(els.topP, "top-p-value", 2);

// ---------- conversation ----------

function scrollDown() { els.log.scrollTop = els.log.scrollHeight; }

function addBubble(role, text, imageUrl) {
  els.empty.hidden = true;
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? "MiniGPT-4" : "Error";
  div.appendChild(who);
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = "uploaded image";
    div.appendChild(img);
  }
  const t = document.createElement("span");
  t.className = "text";
  t.textContent = text;
  div.appendChild(t);
  els.log.appendChild(div);
  scrollDown();
  return div;
}

function showError(message) { addBubble("error", message); }

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.hidden = !busy;
  els.reset.disabled = busy;
}

function requestBody() {
  return {
    model: state.model || undefined,
    messages: state.history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number(els.temperature.value),
    top_p: Number(els.topP.value),
    num_beams: Number(els.beams.value),
    max_tokens: Math.max(1, Math.min(Number(els.maxTokens.value) || 300, state.limits.max_tokens)),
    task: els.task.value || undefined,
  };
}

// ---------- grounded answers (MiniGPT-v2) ----------

const BOX_COLOURS = ["#e6194b", "#3cb44b", "#0082c8", "#f58230", "#911eb4", "#46f0f0", "#f032e6", "#ffe119"];

// The answer without its box markup: <p>label</p> keeps the label, {<x1><y1><x2><y2>} and
// <delim> go.
function plainAnswer(text) {
  return text.replace(/<\/?p>/g, "").replace(/\{(<[^>]*>)*\}/g, "").replace(/<delim>/g, "").replace(/[ \t]+/g, " ").trim();
}

// The image with the answer's boxes (image pixels, as the server sends them) drawn over it, in
// an SVG whose view box is the image's own size, so they scale with it.
function groundedImage(imageUrl, boxes) {
  const wrap = document.createElement("div");
  wrap.className = "grounded";
  const img = document.createElement("img");
  img.alt = "the image with the answer's boxes";
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  img.addEventListener("load", () => {
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const labels = [];
    for (const b of boxes) {
      let k = labels.indexOf(b.label);
      if (k < 0) { labels.push(b.label); k = labels.length - 1; }
      const colour = BOX_COLOURS[k % BOX_COLOURS.length];
      const rect = document.createElementNS(svgNS, "rect");
      rect.setAttribute("x", b.x1); rect.setAttribute("y", b.y1);
      rect.setAttribute("width", Math.max(0, b.x2 - b.x1)); rect.setAttribute("height", Math.max(0, b.y2 - b.y1));
      rect.setAttribute("stroke", colour);
      rect.dataset.label = b.label;
      svg.appendChild(rect);
      if (b.label) {
        const t = document.createElementNS(svgNS, "text");
        t.setAttribute("x", b.x1 + 4);
        t.setAttribute("y", b.y1 + 16);
        t.textContent = b.label;
        svg.appendChild(t);
      }
    }
    wrap.dataset.boxes = String(boxes.length);
  });
  img.src = imageUrl;
  wrap.append(img, svg);
  return wrap;
}

// Reads server-sent events from a fetch response, calling onData with each `data:` payload.
async function readEvents(resp, onData) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data && onData(data) === false) return;
    }
  }
}

async function ask(text) {
  const content = [];
  const image = state.pendingImage;
  if (image) content.push({ type: "image_url", image_url: { url: image } });
  if (text) content.push({ type: "text", text });
  const userMsg = { role: "user", content: image ? content : text };
  state.history.push(userMsg);
  const userBubble = addBubble("user", text, image);
  state.pendingImage = null;
  renderImagePanel();

  const bubble = addBubble("assistant", "");
  bubble.classList.add("streaming");
  bubble.dataset.state = "streaming";
  const textEl = bubble.querySelector(".text");
  const started = performance.now();
  let answer = "", finish = null, usage = null, failed = null, boxes = null;

  state.controller = new AbortController();
  setBusy(true);
  setStatus("answering…");
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()),
      signal: state.controller.signal,
    });
    if (!resp.ok) {
      let msg = `HTTP ${resp.status}`;
      try { const j = await resp.json(); msg = j.error?.message || msg; } catch (_) {}
      throw new Error(msg);
    }
    await readEvents(resp, (data) => {
      if (data === "[DONE]") return false;
      const obj = JSON.parse(data);
      if (obj.error) { failed = obj.error.message; return false; }
      if (obj.usage) usage = obj.usage;
      const choice = obj.choices && obj.choices[0];
      if (choice) {
        if (choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          textEl.textContent = answer;
          scrollDown();
        }
        if (choice.delta && Array.isArray(choice.delta.boxes)) boxes = choice.delta.boxes;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else failed = e.message || String(e);
  } finally {
    state.controller = null;
    setBusy(false);
  }

  bubble.classList.remove("streaming");
  if (failed !== null && !answer) {
    // Nothing came back: take the question out of the history so it can be asked again.
    state.history.pop();
    bubble.remove();
    userBubble.classList.add("failed");
    if (image && !state.pendingImage) { state.pendingImage = image; renderImagePanel(); }
    showError(failed);
    bubble.dataset.state = "error";
    setStatus("error", true);
    return;
  }
  state.history.push({ role: "assistant", content: answer.trim() });
  const meta = document.createElement("span");
  meta.className = "meta";
  const secs = ((performance.now() - started) / 1000).toFixed(1);
  const parts = [secs + " s"];
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} new tokens`);
  if (finish === "length") parts.push("stopped at the token limit");
  if (finish === "stopped") parts.push("stopped by you");
  meta.textContent = parts.join(" · ");
  bubble.appendChild(meta);
  if (!answer) textEl.textContent = "(empty answer)";
  const shown = lastImageInHistory();
  if (boxes && boxes.length && shown) {
    textEl.textContent = plainAnswer(answer);
    bubble.insertBefore(groundedImage(shown, boxes), textEl);
  }
  if (failed !== null) showError(failed);
  bubble.dataset.state = "done";
  setStatus("ready");
  scrollDown();
}

els.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  if (state.controller) return;
  const text = els.prompt.value.trim();
  if (!text && !state.pendingImage) { els.prompt.focus(); return; }
  if (!text) { showError("Type a question about the image."); return; }
  els.prompt.value = "";
  ask(text);
});
els.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); els.composer.requestSubmit(); }
});
els.stop.addEventListener("click", () => { if (state.controller) state.controller.abort(); });
els.reset.addEventListener("click", () => {
  state.history = [];
  state.pendingImage = null;
  for (const m of [...els.log.querySelectorAll(".msg")]) m.remove();
  els.empty.hidden = false;
  renderImagePanel();
  setStatus("ready");
  els.prompt.focus();
});

loadServerInfo();
renderImagePanel();
