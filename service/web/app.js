// The try-it page: POST /v1/intents and show the answer. Model output is inserted with
// textContent only (never as HTML), so nothing a model writes can run in the page.
"use strict";

const $ = (id) => document.getElementById(id);
const OOS = "oos";

function chip(call) {
  const el = document.createElement("span");
  el.className = call.name === OOS ? "chip oos" : "chip";
  el.textContent = call.name;
  const args = document.createElement("span");
  args.className = "args";
  args.textContent = `(${call.args.join(", ")})`;
  el.append(args);
  return el;
}

function show(answer) {
  const chips = $("intents");
  chips.replaceChildren(...answer.intents.map(chip));
  if (answer.intents.length === 0) {
    const none = document.createElement("span");
    none.className = "chip none";
    none.textContent = "no intent recognised";
    chips.append(none);
  }
  $("confidence").textContent = `${(answer.confidence * 100).toFixed(1)} %`;
  $("typicality").textContent = answer.typicality == null ? "—" : answer.typicality.toFixed(2);
  $("latency").textContent = `${answer.latency_ms.toFixed(0)} ms`;
  $("raw").textContent = answer.raw;
  $("result").hidden = false;
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  sessionStorage.setItem("intentlm-token", token);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  $("send").disabled = true;
  $("error").hidden = true;
  try {
    const reply = await fetch("/v1/intents", {
      method: "POST",
      headers,
      body: JSON.stringify({ text: $("utterance").value, constrained: $("constrained").checked }),
    });
    const body = await reply.json();
    if (!reply.ok) {
      const error = body.error || {};
      fail(`${reply.status} ${error.code || ""}: ${error.message || reply.statusText}`);
      if (reply.status === 401) $("options").open = true;
      return;
    }
    show(body);
  } catch (err) {
    fail(`The server did not answer: ${err.message}`);
  } finally {
    $("send").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("intentlm-token") || "";
  $("ask").addEventListener("submit", ask);
  $("utterance").focus();
});
