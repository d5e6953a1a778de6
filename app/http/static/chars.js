// Text drawn one <span> per character, shaded by surprisal, with one shared tooltip that
// describes the character under the pointer. Spans carry only their index (data-i); what
// the tooltip shows is looked up by the view that drew them, so thousands of characters
// cost one element each and a single pair of listeners per container.

// Surprisal buckets in bits (−log2 p): heat0 below 1 bit (p > 1/2) … heat7 at 11 bits or more.
export const BUCKETS = [1, 2, 3, 4, 6, 8, 11];

export function bucket(bits) {
  let index = 0;
  while (index < BUCKETS.length && bits >= BUCKETS[index]) index += 1;
  return index;
}

export function bucketLabels() {
  const edges = [0, ...BUCKETS];
  return edges.map((low, i) => (i === BUCKETS.length ? `≥ ${low}` : `${low}–${edges[i + 1]}`));
}

export const bitsOf = (logprob) => -logprob / Math.LN2;

// A character as the tooltip names it: invisible ones get a visible stand-in.
export function shown(char) {
  if (char === " ") return "␣ (space)";
  if (char === "\n") return "↵ (newline)";
  if (char === "\t") return "⇥ (tab)";
  return char;
}

export function percent(logprob) {
  const p = Math.exp(logprob) * 100;
  if (p >= 99.95) return "100 %";
  if (p < 0.1) return "< 0.1 %";
  return `${p.toFixed(p < 10 ? 1 : 0)} %`;
}

// Spans for `text` (code points, as the server counts characters), indexed from `first`.
export function charSpans(text, first) {
  const fragment = document.createDocumentFragment();
  let index = first;
  for (const char of text) {
    const span = document.createElement("span");
    span.textContent = char;
    span.dataset.i = String(index);
    if (char === "\n") span.className = "nl"; // the style shows a ↵ so it can be hovered
    fragment.append(span);
    index += 1;
  }
  return fragment;
}

export function shade(span, bits) {
  span.classList.add(`heat${bucket(bits)}`);
}

// The legend of the shading: one swatch per bucket.
export function fillLegend(list) {
  list.replaceChildren(
    ...bucketLabels().map((label, i) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = `swatch heat${i}`;
      swatch.setAttribute("aria-hidden", "true");
      item.append(swatch, `${label} bits`);
      return item;
    }),
  );
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One tooltip for the page. describe(index) → {title, lines: [string], top: [{char,
// logprob}]} or null for a character with nothing to show.
export class Tooltip {
  constructor(tip) {
    this.tip = tip;
    this.current = null;
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.hide();
    });
    window.addEventListener("resize", () => this.hide());
  }

  attach(container, describe) {
    const show = (event) => {
      const span = event.target.closest?.("span[data-i]");
      if (!span || !container.contains(span)) return;
      const about = describe(Number(span.dataset.i));
      if (about) this.show(span, about);
      else this.hide();
    };
    container.addEventListener("mouseover", show);
    container.addEventListener("click", show); // touch screens have no hover
    container.addEventListener("mouseleave", () => this.hide());
  }

  show(span, { title, lines = [], top = [] }) {
    this.current?.classList.remove("hovered");
    this.current = span;
    span.classList.add("hovered");
    const body = [element("p", "tip-title", title)];
    for (const line of lines) body.push(element("p", "tip-line", line));
    if (top.length) {
      body.push(element("p", "tip-line", "Likeliest here:"));
      const list = element("ol", "tip-top");
      for (const { char, logprob } of top) {
        const item = element("li");
        item.append(element("code", null, shown(char)), ` ${percent(logprob)}`);
        list.append(item);
      }
      body.push(list);
    }
    this.tip.replaceChildren(...body);
    this.tip.hidden = false;
    // Below the character, kept inside the window (CSSOM, which the page's CSP allows).
    const box = span.getBoundingClientRect();
    const width = this.tip.offsetWidth;
    const left = Math.max(4, Math.min(box.left, document.documentElement.clientWidth - width - 4));
    this.tip.style.left = `${left + window.scrollX}px`;
    this.tip.style.top = `${box.bottom + window.scrollY + 6}px`;
  }

  hide() {
    this.current?.classList.remove("hovered");
    this.current = null;
    this.tip.hidden = true;
  }
}
