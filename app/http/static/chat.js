// The Chat view: a conversation with the chosen model through POST /v1/chat/completions,
// streamed. The model's chat template (GET /model) writes the messages out as the text it
// continues; its reply ends where the template says (a blank line, for the built-in ones).
// Each turn sends the last reply's state with the conversation, so only the new messages
// are read and a conversation may grow past the server's MAX_PRIME_LENGTH; a state the
// server cannot continue (the system text changed, a reply was stopped) is dropped and the
// turn sent whole.

import { ApiError, NeedsKey, readEvents, request } from "./api.js";

const $ = (id) => document.getElementById(id);

const ENDINGS = { stop: "ended where the template ends a reply", length: "reached the length" };

export class ChatView {
  // models: the ModelPicker (the chosen name, and its chat template).
  constructor(models, onNeedKey) {
    this.models = models;
    this.onNeedKey = onNeedKey;
    this.messages = []; // the conversation so far: {role, content}
    this.state = null; // the last reply's state, when it ended by itself
    this.running = null; // the AbortController of the reply in flight
    this.bind();
  }

  bind() {
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $("chat-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    $("chat-stop").addEventListener("click", () => this.stop());
    $("chat-clear").addEventListener("click", () => this.clear());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.running) this.stop();
    });
  }

  setStatus(text) {
    $("chat-status").textContent = text;
  }

  // Which template the chosen model chats with, under the log.
  showTemplate(info) {
    const template = info?.chat_template;
    let note = "";
    if (template?.problem) {
      note = `This model's chat template cannot be used: ${template.problem}`;
    } else if (template?.source === "checkpoint") {
      note = "The model's own chat template writes the conversation out for it.";
    } else if (template?.source === "default") {
      note = "This model has no chat template: the plain default writes the conversation.";
    }
    $("chat-template").textContent = note;
  }

  // One message in the log; returns its text element (a reply grows in it).
  append(role, content) {
    const item = document.createElement("li");
    item.className = `chat-message ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : this.models.name ?? "Model";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = content;
    item.append(who, text);
    $("chat-log").append(item);
    item.scrollIntoView({ block: "nearest" });
    return text;
  }

  requestBody(withState) {
    const messages = [];
    const system = $("chat-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...this.messages);
    const body = { model: this.models.name, messages, stream: true, return_state: true };
    if (withState && this.state) body.state = this.state;
    const numbers = [["max_tokens", "chat-length"], ["temperature", "chat-temperature"]];
    for (const [field, id] of numbers) {
      const text = $(id).value.trim();
      if (text !== "") body[field] = Number(text);
    }
    const seed = $("chat-seed").value.trim();
    if (seed) body.seed = seed; // as a string: read as the exact integer
    return body;
  }

  setRunning(controller) {
    this.running = controller;
    $("chat-send").disabled = controller !== null;
    $("chat-stop").disabled = controller === null;
    $("chat-log").setAttribute("aria-busy", String(controller !== null));
  }

  async send() {
    const content = $("chat-input").value.trim();
    if (this.running || !content) return;
    this.messages.push({ role: "user", content });
    this.append("user", content);
    $("chat-input").value = "";
    const controller = new AbortController();
    this.setRunning(controller);
    const reply = this.append("assistant", "");
    let ending = null;
    let state = null;
    this.setStatus("Replying…");
    try {
      const response = await this.post(controller);
      for await (const { data } of readEvents(response.body)) {
        if (data.error) throw new Error(data.error.message);
        for (const choice of data.choices ?? []) {
          if (choice.delta?.content) reply.textContent += choice.delta.content;
          if (choice.finish_reason) [ending, state] = [choice.finish_reason, choice.state];
        }
      }
      const chars = [...reply.textContent].length;
      this.setStatus(`Reply of ${chars} characters; ${ENDINGS[ending] ?? ending}.`);
    } catch (error) {
      if (error.name === "AbortError") {
        this.setStatus("Stopped.");
      } else {
        this.setStatus(`Error: ${error.message}`);
        if (error instanceof NeedsKey) this.onNeedKey();
      }
    } finally {
      // What was written stays in the conversation, even when stopped; a refused message
      // (nothing written) leaves it, to be edited and sent again.
      if (reply.textContent || ending) {
        this.messages.push({ role: "assistant", content: reply.textContent });
        this.state = state ?? null; // a stopped reply has none: the next turn goes whole
      } else {
        this.messages.pop();
        reply.parentElement.remove();
        $("chat-log").lastElementChild?.remove();
        $("chat-input").value = content;
      }
      this.setRunning(null);
    }
  }

  // The turn, with the last reply's state if there is one; sent again whole if the server
  // cannot continue that state.
  async post(controller) {
    const send = (withState) =>
      request("v1/chat/completions", {
        method: "POST",
        body: this.requestBody(withState),
        signal: controller.signal,
        accept: "text/event-stream",
      });
    if (!this.state) return send(false);
    try {
      return await send(true);
    } catch (error) {
      if (!(error instanceof ApiError && error.param === "state")) throw error;
      return send(false);
    }
  }

  stop() {
    if (this.running) this.running.abort();
  }

  clear() {
    this.stop();
    this.messages = [];
    this.state = null;
    $("chat-log").replaceChildren();
    this.setStatus("");
  }
}
