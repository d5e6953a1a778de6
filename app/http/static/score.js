// The Score view: POST /score, then the text as a heat map of surprisal, the totals, and
// the most surprising spans.

import { NeedsKey, postJSON } from "./api.js";
import { charSpans, percent, shade, shown } from "./chars.js";

const $ = (id) => document.getElementById(id);

const WINDOW = 8; // characters per surprising span
const SPANS = 5; // how many spans are listed
const CONTEXT = 16; // characters of context each side of a listed span
const MAX_TOP_CHARS = 20_000; // longer texts are scored without alternatives (a smaller reply)
const TOP_N = 5;

// The `count` non-overlapping windows of `width` characters with the highest summed
// surprisal, likeliest first: [{start, bits}]. bits[0] is null (the first character has
// no prediction), so windows start at 1.
export function surprisingSpans(bits, width = WINDOW, count = SPANS) {
  const n = bits.length;
  const size = Math.min(width, n - 1);
  if (size < 1) return [];
  const prefix = new Float64Array(n + 1);
  for (let i = 0; i < n; i += 1) prefix[i + 1] = prefix[i] + (bits[i] ?? 0);
  const starts = [];
  for (let s = 1; s + size <= n; s += 1) starts.push(s);
  const sum = (s) => prefix[s + size] - prefix[s];
  starts.sort((a, b) => sum(b) - sum(a) || a - b);
  const picked = [];
  for (const s of starts) {
    if (picked.length === count) break;
    if (picked.every((p) => s + size <= p.start || p.start + size <= s)) {
      picked.push({ start: s, size, bits: sum(s) });
    }
  }
  return picked;
}

// A stretch of text on one line: newlines and tabs as visible symbols.
const oneLine = (chars) => chars.join("").replace(/\n/g, "↵").replace(/\t/g, "⇥");

export class ScoreView {
  constructor(models, tooltip, onNeedKey) {
    this.models = models;
    this.onNeedKey = onNeedKey;
    this.result = null;
    this.chars = [];
    tooltip.attach($("heatmap"), (i) => this.describe(i));
    $("score-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.score();
    });
    $("score-text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        $("score-form").requestSubmit();
      }
    });
  }

  setStatus(text) {
    $("score-status").textContent = text;
  }

  describe(index) {
    const result = this.result;
    if (!result) return null;
    const char = this.chars[index];
    if (index === 0) return { title: `${shown(char)}: the first character is not predicted` };
    const logprob = result.logprobs[index];
    return {
      title: `${shown(char)}: ${result.surprisal_bits[index].toFixed(2)} bits`,
      lines: [`p ${percent(logprob)}, logprob ${logprob.toFixed(3)}`],
      top: result.top_chars
        ? result.top_chars[index].map((c, j) => ({ char: c, logprob: result.top_logprobs[index][j] }))
        : [],
    };
  }

  async score() {
    const text = $("score-text").value;
    const body = { text, skip_unknown: $("skip-unknown").checked };
    if (this.models.name) body.model = this.models.name;
    if ([...text].length <= MAX_TOP_CHARS) body.top_n = TOP_N;
    $("score-button").disabled = true;
    this.setStatus("Scoring…");
    try {
      this.show(await postJSON("score", body));
      this.setStatus(`Scored by ${this.result.model} in ${this.result.seconds.toFixed(2)} s.`);
    } catch (error) {
      this.setStatus(`Error: ${error.message}${error instanceof NeedsKey ? "." : ""}`);
      if (error instanceof NeedsKey) this.onNeedKey();
    } finally {
      $("score-button").disabled = false;
    }
  }

  show(result) {
    this.result = result;
    this.chars = [...result.text];
    $("score-bpc").textContent = result.bits_per_char.toFixed(3);
    $("score-chars").textContent = String(result.chars);
    $("score-bits").textContent = result.bits.toFixed(1);
    $("score-perplexity").textContent = result.perplexity.toFixed(2);
    $("score-model").textContent = result.model;
    $("score-oov").textContent = String(result.oov_chars);
    $("score-oov-row").hidden = result.oov_chars === 0;
    const map = $("heatmap");
    const fragment = charSpans(result.text, 0);
    const spans = fragment.children;
    for (let i = 1; i < spans.length; i += 1) shade(spans[i], result.surprisal_bits[i]);
    spans[0]?.classList.add("first");
    map.replaceChildren(fragment);
    this.listSpans(surprisingSpans(result.surprisal_bits));
    $("score-result").hidden = false;
  }

  listSpans(picked) {
    const items = picked.map(({ start, size, bits }) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "span-link";
      const before = this.chars.slice(Math.max(0, start - CONTEXT), start);
      const after = this.chars.slice(start + size, start + size + CONTEXT);
      const mark = document.createElement("mark");
      mark.textContent = oneLine(this.chars.slice(start, start + size));
      const figure = document.createElement("span");
      figure.className = "span-bits";
      figure.textContent = `${bits.toFixed(1)} bits`;
      const quote = document.createElement("code");
      quote.append(oneLine(before), mark, oneLine(after));
      button.append(figure, quote);
      button.addEventListener("click", () => this.pick(start, size));
      const item = document.createElement("li");
      item.append(button);
      return item;
    });
    $("surprises").replaceChildren(...items);
  }

  // Outline a listed span in the heat map and bring it into view.
  pick(start, size) {
    const spans = $("heatmap").children;
    for (const old of $("heatmap").querySelectorAll(".picked")) old.classList.remove("picked");
    for (let i = start; i < start + size; i += 1) spans[i].classList.add("picked");
    spans[start].scrollIntoView({ block: "nearest" });
  }
}
