// The playground's entry point: the API key, the model picker and its information panel,
// the Generate / Score / Chat tabs. The views live in generate.js, score.js and chat.js.

import { getJSON, NeedsKey, storedKey, storeKey } from "./api.js";
import { fillLegend, Tooltip } from "./chars.js";
import { ChatView } from "./chat.js";
import { GenerateView } from "./generate.js";
import { ScoreView } from "./score.js";

const $ = (id) => document.getElementById(id);
const MODEL_STORAGE = "charrnn.model";
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

function setStatus(text) {
  $("status").textContent = text;
}

function needKey() {
  $("key-row").hidden = false;
  $("api-key").focus();
}

// The served models (GET /v1/models) in a <select>, and the chosen one's description
// (GET /model/{name}): what requests name in `model`, and the vocabulary the banned box
// checks against.
class ModelPicker {
  constructor() {
    this.info = null;
    this.asked = 0; // answers to an older choice are dropped
    this.listeners = []; // told of each model shown (the chat view's template note)
    $("model").addEventListener("change", () => {
      localStorage.setItem(MODEL_STORAGE, $("model").value);
      this.choose($("model").value);
    });
  }

  get name() {
    return $("model").value || null;
  }

  get vocabulary() {
    return this.info?.vocabulary ?? null;
  }

  async load() {
    try {
      const [list, fallback] = await Promise.all([getJSON("v1/models"), getJSON("model")]);
      const names = list.data.map((card) => card.id);
      $("model").replaceChildren(
        ...names.map((name) => new Option(name, name, false, name === fallback.name)),
      );
      const stored = localStorage.getItem(MODEL_STORAGE);
      if (stored && stored !== fallback.name && names.includes(stored)) {
        $("model").value = stored;
        await this.choose(stored);
      } else {
        this.show(fallback);
      }
      if (!$("status").textContent.startsWith("Error")) setStatus("Ready.");
    } catch (error) {
      if (error instanceof NeedsKey) {
        setStatus("This server needs an API key.");
        needKey();
      } else {
        setStatus(`Model information is unavailable: ${error.message}`);
      }
    }
  }

  async choose(name) {
    const asked = ++this.asked;
    try {
      const info = await getJSON(`model/${encodeURIComponent(name)}`);
      if (asked === this.asked) this.show(info);
    } catch (error) {
      if (error instanceof NeedsKey) needKey();
      setStatus(`Model information is unavailable: ${error.message}`);
    }
  }

  show(info) {
    this.info = info;
    const training = info.training || {};
    const number = (value, digits) => (value == null ? "—" : value.toFixed(digits));
    let corpus = training.corpus ?? "—";
    if (training.corpus_chars != null) {
      corpus += ` (${compact.format(training.corpus_chars)} chars)`;
    }
    $("model-corpus").textContent = corpus;
    $("model-loss").textContent = number(training.val_loss, 3);
    $("model-bpc").textContent = number(training.val_bits_per_char, 3);
    $("model-vocab").textContent = `${info.config.vocab_size} chars`;
    $("model-params").textContent = compact.format(info.parameters);
    $("model-device").textContent = info.device;
    $("length").max = info.limits.max_length;
    $("prime").maxLength = info.limits.max_prime_length;
    $("score-text").maxLength = info.limits.max_score_chars;
    $("chat-length").max = info.limits.max_length;
    $("banned").dispatchEvent(new Event("input")); // the note depends on the vocabulary
    for (const listener of this.listeners) listener(info);
  }
}

// The tabs (WAI-ARIA's pattern: arrow keys move between them); #score or #chat in the
// address opens that view.
function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (chosen, focus) => {
    for (const tab of tabs) {
      const selected = tab === chosen;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      $(tab.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) chosen.focus();
    const view = chosen.id.replace("tab-", "");
    const address = view === "generate" ? location.pathname + location.search : `#${view}`;
    history.replaceState(null, "", address);
  };
  for (const [index, tab] of tabs.entries()) {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -index, End: tabs.length - 1 - index };
      if (!(event.key in moves)) return;
      event.preventDefault();
      select(tabs[(index + moves[event.key] + tabs.length) % tabs.length], true);
    });
  }
  const asked = location.hash ? document.getElementById(`tab-${location.hash.slice(1)}`) : null;
  if (asked?.getAttribute("role") === "tab") select(asked, false);
}

function init() {
  const models = new ModelPicker();
  const tooltip = new Tooltip($("tip"));
  new GenerateView(models, tooltip, needKey);
  new ScoreView(models, tooltip, needKey);
  const chat = new ChatView(models, needKey);
  models.listeners.push((info) => chat.showTemplate(info));
  fillLegend($("legend-generate-list"));
  fillLegend($("legend-score-list"));
  setupTabs();
  const key = $("api-key");
  key.value = storedKey();
  key.addEventListener("change", () => {
    storeKey(key.value.trim());
    models.load();
  });
  if (key.value) $("key-row").hidden = false;
  models.load();
}

init();
