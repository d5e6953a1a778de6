// The playground: streams POST /generate/stream (server-sent events over fetch, so the
// API key can travel in a header and Stop can abort the request) into the page.
"use strict";

const KEY_STORAGE = "charrnn.apiKey";
const $ = (id) => document.getElementById(id);

let running = null; // the AbortController of the generation in flight
let lastSeed = null; // a string: seeds go up to 2^63, past what a JS number holds exactly

function authHeaders(extra = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setStatus(text) {
  $("status").textContent = text;
}

function needKey(message) {
  $("key-row").hidden = false;
  setStatus(message);
  $("api-key").focus();
}

async function loadModel() {
  let response;
  try {
    response = await fetch("model", { headers: authHeaders() });
  } catch (error) {
    setStatus(`The server cannot be reached: ${error.message}`);
    return;
  }
  if (response.status === 401) {
    needKey("This server needs an API key.");
    return;
  }
  if (!response.ok) {
    setStatus(`Model information is unavailable (HTTP ${response.status}).`);
    return;
  }
  const info = await response.json();
  const training = info.training || {};
  const number = (value, digits) => (value == null ? "—" : value.toFixed(digits));
  $("model-name").textContent = info.name;
  $("model-loss").textContent = number(training.val_loss, 3);
  $("model-bpc").textContent = number(training.val_bits_per_char, 3);
  $("model-vocab").textContent = `${info.config.vocab_size} chars`;
  $("model-device").textContent = info.device;
  $("length").max = info.limits.max_length;
  $("prime").maxLength = info.limits.max_prime_length;
  if (!$("status").textContent.startsWith("Error")) setStatus("Ready.");
}

// Server-sent events from a fetch body: yields {event, data, raw} per event.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // keep-alive comments
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) {
        const raw = data.join("\n");
        yield { event, data: JSON.parse(raw), raw };
      }
    }
  }
}

function requestBody() {
  const body = { prime: $("prime").value };
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  for (const [field, id] of [["length", "length"], ["top_k", "top-k"],
    ["temperature", "temperature"], ["top_p", "top-p"]]) {
    const value = number(id);
    if (value !== null) body[field] = value;
  }
  const seed = $("seed").value.trim();
  if (seed) body.seed = seed; // as a string: pydantic reads it as the exact integer
  return body;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      return body.detail.map((e) => `${e.loc[e.loc.length - 1]}: ${e.msg}`).join("; ");
    }
    return body.detail || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function setRunning(controller) {
  running = controller;
  $("generate").disabled = controller !== null;
  $("stop").disabled = controller === null;
  $("output").setAttribute("aria-busy", String(controller !== null));
  if (controller === null && document.activeElement === $("stop")) $("generate").focus();
}

async function generate() {
  if (running) return;
  const controller = new AbortController();
  setRunning(controller);
  const output = $("output-text");
  $("output-prime").textContent = $("prime").value;
  output.textContent = "";
  $("reuse-seed").hidden = true;
  let count = 0;
  let stats = null;
  setStatus("Generating…");
  try {
    const response = await fetch("generate/stream", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (response.status === 401) {
      needKey("Error: the API key is missing or wrong.");
      return;
    }
    if (!response.ok) {
      setStatus(`Error: ${await errorMessage(response)}`);
      return;
    }
    const box = $("output");
    for await (const { event, data, raw } of readEvents(response.body)) {
      if (event === "chars") {
        const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
        output.append(data);
        count += data.length;
        if (atBottom) box.scrollTop = box.scrollHeight;
      } else if (event === "done") {
        stats = data.stats;
        lastSeed = /"seed":\s*(\d+)/.exec(raw)?.[1] ?? String(stats.seed);
      } else if (event === "error") {
        throw new Error(data.message);
      }
    }
    if (stats) {
      const rate = Math.round(stats.chars_per_second);
      setStatus(`Done: ${stats.chars} characters in ${stats.seconds.toFixed(2)} s ` +
        `(${rate} chars/s), seed ${lastSeed}.`);
      $("reuse-seed").hidden = false;
    }
  } catch (error) {
    if (error.name === "AbortError") setStatus(`Stopped after ${count} characters.`);
    else setStatus(`Error: ${error.message}`);
  } finally {
    setRunning(null);
  }
}

function stop() {
  if (running) running.abort();
}

function init() {
  const form = $("form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  $("stop").addEventListener("click", stop);
  $("prime").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit(); // runs the fields' own checks first
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running) {
      event.preventDefault();
      stop();
    }
  });
  $("reuse-seed").addEventListener("click", () => {
    if (lastSeed) $("seed").value = lastSeed;
    $("seed").focus();
  });
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY_STORAGE, key.value.trim());
    else localStorage.removeItem(KEY_STORAGE);
    loadModel();
  });
  if (key.value) $("key-row").hidden = false;
  loadModel();
}

init();
