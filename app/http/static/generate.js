// The Generate view: the form becomes a POST /generate/stream body, and the streamed
// characters go into the page (one span each when probabilities are asked for).
//
// Continue carries the story on from the state its last generation returned (a few KB
// whatever the story's length, sent back as `state`), so a story can grow past the
// server's MAX_PRIME_LENGTH and is never sent again; the server keeps nothing of it.

import { NeedsKey, readEvents, request } from "./api.js";
import { bitsOf, charSpans, percent, shade, shown } from "./chars.js";

const $ = (id) => document.getElementById(id);

// Fields typed as numbers: [request field, input id]. An empty input sends nothing, so
// the server's default applies.
const NUMBERS = [
  ["length", "length"],
  ["temperature", "temperature"],
  ["top_k", "top-k"],
  ["top_p", "top-p"],
  ["min_p", "min-p"],
  ["repetition_penalty", "repetition-penalty"],
  ["repeat_last_n", "repeat-last-n"],
  ["frequency_penalty", "frequency-penalty"],
  ["presence_penalty", "presence-penalty"],
];
const STOP_INPUTS = ["stop-1", "stop-2", "stop-3", "stop-4"];
const TOP_ALTERNATIVES = 5; // logprobs: the most the API gives
const BAN = -100; // a logit bias of -100 bans a character

const ENDINGS = {
  stop: "stopped at a stop string",
  regex: "the regex matched",
  length: "reached the length",
};

// Stop strings and banned characters are typed on one line: \n, \t and \\ stand for a
// newline, a tab and a backslash.
export function unescapeText(text) {
  return text.replace(/\\([nt\\])/g, (_, c) => ({ n: "\n", t: "\t", "\\": "\\" })[c]);
}

// The banned characters the model knows, and those it does not (it never writes them).
export function bannedChars(text, vocabulary) {
  const chars = [...new Set(unescapeText(text))];
  if (!vocabulary) return { known: chars, unknown: [] };
  const known = new Set(vocabulary);
  return { known: chars.filter((c) => known.has(c)), unknown: chars.filter((c) => !known.has(c)) };
}

function ending(done) {
  if (done.finish_reason === "length" && done.regex_complete === false) {
    return "reached the length before the regex matched in full";
  }
  return ENDINGS[done.finish_reason] ?? done.finish_reason;
}

export class GenerateView {
  // models: the ModelPicker (the chosen name and its vocabulary); tooltip: the page's one.
  constructor(models, tooltip, onNeedKey) {
    this.models = models;
    this.onNeedKey = onNeedKey;
    this.running = null; // the AbortController of the generation in flight
    this.lastSeed = null; // a string: seeds go up to 2^63, past what a JS number holds exactly
    this.entries = []; // logprobs of the generated characters, by index
    // The story shown, for Continue: its state after the last generation (null: none to
    // continue), the model that made it, and its generated characters so far.
    this.story = { state: null, model: null, chars: 0 };
    tooltip.attach($("output-text"), (i) => this.describe(i));
    this.bind();
  }

  bind() {
    const form = $("form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.generate();
    });
    $("stop").addEventListener("click", () => this.stop());
    $("continue").addEventListener("click", () => this.generate(true));
    $("prime").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit(); // runs the fields' own checks first
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.running) {
        event.preventDefault();
        this.stop();
      }
    });
    $("reuse-seed").addEventListener("click", () => {
      if (this.lastSeed) $("seed").value = this.lastSeed;
      $("seed").focus();
    });
    $("banned").addEventListener("input", () => this.checkBanned());
  }

  setStatus(text) {
    $("status").textContent = text;
  }

  // A note under the banned box naming characters the model cannot write anyway.
  checkBanned() {
    const { unknown } = bannedChars($("banned").value, this.models.vocabulary);
    const note = $("banned-note");
    note.textContent = unknown.length
      ? `Not in this model's vocabulary, so never written anyway: ${unknown.map(shown).join(" ")}`
      : "";
    note.hidden = unknown.length === 0;
  }

  requestBody() {
    const body = { prime: $("prime").value };
    if (this.models.name) body.model = this.models.name;
    for (const [field, id] of NUMBERS) {
      const text = $(id).value.trim();
      if (text !== "") body[field] = Number(text);
    }
    const seed = $("seed").value.trim();
    if (seed) body.seed = seed; // as a string: pydantic reads it as the exact integer
    const stop = STOP_INPUTS.map((id) => unescapeText($(id).value)).filter((s) => s !== "");
    if (stop.length) body.stop = stop;
    const { known } = bannedChars($("banned").value, this.models.vocabulary);
    if (known.length) body.logit_bias = Object.fromEntries(known.map((c) => [c, BAN]));
    const regex = $("regex").value;
    if (regex !== "") body.regex = regex;
    if ($("logprobs").checked) body.logprobs = TOP_ALTERNATIVES;
    body.return_state = true; // what Continue sends back
    return body;
  }

  describe(index) {
    const entry = this.entries[index];
    if (!entry) return null;
    return {
      title: `${shown(entry.char)}: ${bitsOf(entry.logprob).toFixed(2)} bits`,
      lines: [`p ${percent(entry.logprob)}, logprob ${entry.logprob.toFixed(3)}`],
      top: entry.top,
    };
  }

  setRunning(controller) {
    this.running = controller;
    $("generate").disabled = controller !== null;
    $("stop").disabled = controller === null;
    $("continue").hidden = controller !== null || this.story.state === null;
    $("output").setAttribute("aria-busy", String(controller !== null));
    if (controller === null && document.activeElement === $("stop")) $("generate").focus();
  }

  // A new story from the prime, or (continuing) the shown story carried on from its state.
  async generate(continuing = false) {
    if (this.running || (continuing && this.story.state === null)) return;
    const body = this.requestBody();
    if (continuing) {
      body.state = this.story.state;
      body.prime = "";
      body.model = this.story.model; // a state is its model's own
    }
    const controller = new AbortController();
    this.story.state = null; // until this generation's own comes
    this.setRunning(controller);
    const output = $("output-text");
    const perChar = body.logprobs !== undefined;
    output.classList.toggle("shaded", perChar);
    $("legend-generate").hidden = !perChar;
    if (!continuing) {
      $("output-prime").textContent = body.prime;
      output.replaceChildren();
      this.entries = [];
      this.story = { state: null, model: body.model ?? null, chars: 0 };
    }
    $("output-model").textContent = "";
    $("reuse-seed").hidden = true;
    const start = this.story.chars; // the story's characters before this generation's
    const firstSpan = output.children.length; // an earlier part may be plain text
    let count = start;
    let shaded = start; // characters that have their logprob
    let done = null;
    let raw = "";
    this.setStatus("Generating…");
    try {
      const response = await request("generate/stream", {
        method: "POST",
        body,
        signal: controller.signal,
        accept: "text/event-stream",
      });
      const box = $("output");
      for await (const event of readEvents(response.body)) {
        if (event.event === "chars") {
          const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
          if (perChar) output.append(charSpans(event.data, count));
          else output.append(event.data);
          count += [...event.data].length;
          if (atBottom) box.scrollTop = box.scrollHeight;
        } else if (event.event === "logprobs") {
          // Columns, one entry per character of the chars event just before.
          const spans = output.children;
          const { chars, logprobs, top_chars: topChars, top_logprobs: topLogprobs } = event.data;
          chars.forEach((char, i) => {
            const top = topChars[i].map((c, j) => ({ char: c, logprob: topLogprobs[i][j] }));
            this.entries[shaded] = { char, logprob: logprobs[i], top };
            const span = spans[firstSpan + shaded - start];
            if (span) shade(span, bitsOf(logprobs[i]));
            shaded += 1;
          });
        } else if (event.event === "done") {
          done = event.data;
          raw = event.raw;
        } else if (event.event === "error") {
          throw new Error(event.data.message);
        }
      }
      this.story.chars = count;
      if (done) this.finish(done, raw);
    } catch (error) {
      this.story.chars = count; // shown, but with no state to continue from
      if (error.name === "AbortError") {
        this.setStatus(`Stopped after ${count - start} characters.`);
      } else {
        this.setStatus(`Error: ${error.message}${error instanceof NeedsKey ? "." : ""}`);
        if (error instanceof NeedsKey) this.onNeedKey();
      }
    } finally {
      this.setRunning(null);
    }
  }

  finish(done, raw) {
    const stats = done.stats;
    this.lastSeed = /"seed":\s*(\d+)/.exec(raw)?.[1] ?? String(stats.seed);
    const rate = Math.round(stats.chars_per_second);
    $("output-model").textContent = `by ${stats.model}`;
    this.story.state = done.state ?? null;
    this.story.model = stats.model;
    const told = this.story.chars + [...$("output-prime").textContent].length;
    const story = this.story.chars > stats.chars ? ` Story: ${told} characters.` : "";
    this.setStatus(
      `Done by ${stats.model}: ${stats.chars} characters in ${stats.seconds.toFixed(2)} s ` +
        `(${rate} chars/s), seed ${this.lastSeed}; ${ending(done)}.${story}`,
    );
    $("reuse-seed").hidden = false;
  }

  stop() {
    if (this.running) this.running.abort();
  }
}
