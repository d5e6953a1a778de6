// The service's HTTP API as the page uses it: the API key, JSON requests, error messages
// and server-sent events read from a fetch body (so the key can travel in a header and
// Stop can abort the request).

const KEY_STORAGE = "charrnn.apiKey";

export function storedKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function storeKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders(extra = {}) {
  const key = storedKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// The server refused the request for want of a (right) key.
export class NeedsKey extends Error {}

// A request the server answered with an error: `message` is its own words.
export class ApiError extends Error {
  // param: the field an OpenAI-shaped error names (under /v1), or null.
  constructor(message, status, detail, param = null) {
    super(message);
    this.status = status;
    this.detail = detail;
    this.param = param;
  }
}

// FastAPI's 422 lists {loc, msg}; other errors carry `detail` (native API) or
// `error.message` (OpenAI's shape under /v1).
async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    return new ApiError(`HTTP ${response.status}`, response.status, null);
  }
  const detail = body?.detail;
  let message = `HTTP ${response.status}`;
  if (Array.isArray(detail)) {
    message = detail.map((e) => `${e.loc[e.loc.length - 1]}: ${e.msg}`).join("; ");
  } else if (typeof detail === "string") {
    message = detail;
  } else if (body?.error?.message) {
    message = body.error.message;
  }
  return new ApiError(message, response.status, detail, body?.error?.param ?? null);
}

// fetch, with the key; throws NeedsKey on 401 and ApiError on any other failure.
export async function request(path, { method = "GET", body, signal, accept } = {}) {
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  if (accept) headers.Accept = accept;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (response.status === 401) throw new NeedsKey("the API key is missing or wrong");
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function postJSON(path, body) {
  return (await request(path, { method: "POST", body })).json();
}

// Server-sent events from a fetch body: yields {event, data, raw} per event.
export async function* readEvents(body) {
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
        if (raw === "[DONE]") return; // the end of an OpenAI-style stream (/v1)
        yield { event, data: JSON.parse(raw), raw };
      }
    }
  }
}
