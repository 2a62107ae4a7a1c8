// The try-it page: POST v1/intents and show the answer. Model output is inserted with
// textContent only (never as HTML), so nothing a model writes can run in the page.
// URLs are relative to the page (…/ui), so they keep any path prefix a gateway serves it under.
"use strict";

const $ = (id) => document.getElementById(id);
// The server's out-of-scope label (INTENTLM_OOS_LABEL), which it writes into the page.
const OOS = document.querySelector('meta[name="intentlm-oos-label"]').content;
// The served models, the default first (comma-separated: a model's name has no comma); a selector when several.
const MODELS = document.querySelector('meta[name="intentlm-models"]').content.split(",").filter(Boolean);

const percent = (p) => `${(p * 100).toFixed(1)} %`;

function chip(call, oosReason) {
  const el = document.createElement("span");
  el.className = oosReason != null || call.name === OOS ? "chip oos" : "chip";
  if (oosReason != null) el.title = `out of scope: ${oosReason} under its threshold`;
  el.textContent = call.name;
  const args = document.createElement("span");
  args.className = "args";
  args.textContent = `(${call.args.join(", ")})`;
  el.append(args);
  return el;
}

function bar(ranked) {
  const row = document.createElement("li");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = name.title = ranked.name;
  const track = document.createElement("span");
  track.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.min(Math.max(ranked.confidence, 0), 1) * 100}%`;
  track.append(fill);
  const value = document.createElement("span");
  value.className = "pct";
  value.textContent = percent(ranked.confidence);
  row.append(name, track, value);
  return row;
}

function show(answer) {
  const chips = $("intents");
  chips.replaceChildren(...answer.intents.map((call) => chip(call, answer.oos_reason)));
  if (answer.intents.length === 0) {
    const none = document.createElement("span");
    none.className = "chip none";
    none.textContent = "no intent recognised";
    chips.append(none);
  }
  $("confidence").textContent = percent(answer.confidence);
  $("ranking").replaceChildren(...answer.ranking.map(bar));
  $("ranking-box").hidden = answer.ranking.length === 0;
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
    const reply = await fetch("v1/intents", {
      method: "POST",
      headers,
      body: JSON.stringify({
        text: $("utterance").value,
        constrained: $("constrained").checked,
        ...(MODELS.length > 1 ? { model: $("model").value } : {}),
      }),
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
  $("model").replaceChildren(...MODELS.map((name) => new Option(name, name)));
  $("model-box").hidden = MODELS.length < 2;
  $("utterance").focus();
});
