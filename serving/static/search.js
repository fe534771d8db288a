// The search page: a text query (also from ?q=) or a dropped file, the nearest items of every indexed modality.
// It speaks the public API (/v1/models, /v1/search, /v1/media) with the tab's API key, if the server needs one.
"use strict";

const KEY = "oneencoder-api-key";
const PER_MODALITY = 6;
const MAX_FILE_BYTES = 10 * 1024 * 1024;
const $ = (selector) => document.querySelector(selector);
let indexed = null;  // the indexed modalities, from /v1/models
let generation = 0;  // a newer search discards the answers of an older one

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

function status(text, isError = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", isError);
}

async function api(path, body) {
  const response = await fetch(path, {
    method: body ? "POST" : "GET",
    headers: { ...authHeaders(), ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) {
    $("#key-box").open = true;
    throw new Error("this server needs an API key: enter it under \u201cAPI key\u201d");
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

async function mediaUrl(modality, id) {
  const params = new URLSearchParams({ modality, id });
  const response = await fetch("/v1/media?" + params, { headers: authHeaders() });
  if (!response.ok) return null;
  return URL.createObjectURL(await response.blob());
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

async function renderHit(hit) {
  const card = element("div", { class: "hit", "data-id": hit.id, "data-modality": hit.modality });
  const players = { image: "img", video: "video", audio: "audio" };
  if (hit.modality === "text") {  // its text where the index keeps it (a manifest column kept as metadata), else its id
    const kept = hit.metadata ? Object.values(hit.metadata).filter((v) => typeof v === "string").join(" \u00b7 ") : "";
    if (hit.uri || kept) card.append(element("p", { class: "text" }, hit.uri || kept));
  } else if (players[hit.modality]) {
    const url = await mediaUrl(hit.modality, hit.id);
    if (url) {
      const media = element(players[hit.modality], players[hit.modality] === "img"
        ? { src: url, alt: hit.id } : { src: url, controls: "", preload: "metadata" });
      card.append(media);
    } else {
      card.append(element("p", {}, "(media not available)"));
    }
  } else {
    card.append(element("p", {}, "(" + hit.modality + ")"));
  }
  const meta = element("div", { class: "meta" });
  meta.append(element("span", { class: "id" }, hit.id));
  const probability = hit.match === undefined ? "" : " \u00b7 match " + hit.match.toFixed(2);
  meta.append(element("span", { class: "score" }, "score " + hit.score.toFixed(3) + probability));
  card.append(meta);
  return card;
}

async function search(query, modality) {
  const mine = ++generation;
  status("Searching\u2026");
  try {
    if (!indexed) indexed = (await api("/v1/models")).data[0].search_index;
    const answers = await Promise.all(indexed.map((target) => api("/v1/search", {
      query, target_modality: target, k: PER_MODALITY, ...(modality ? { modality } : {}),
    })));
    if (mine !== generation) return;
    const columns = await Promise.all(answers.map(async (answer, i) => {
      const column = element("section", { class: "column", "data-modality": indexed[i] });
      column.append(element("h2", {}, indexed[i] + " (" + answer.data.length + ")"));
      for (const card of await Promise.all(answer.data.map(renderHit))) column.append(card);
      return column;
    }));
    if (mine !== generation) return;
    $("#results").replaceChildren(...columns);
    const as = answers[0] ? answers[0].query_modality : "";
    status("Nearest items for a" + (/^[aeiou]/.test(as) ? "n " : " ") + as + " query.");
  } catch (error) {
    if (mine === generation) status(error.message, true);
  }
}

function searchFile(file) {
  if (!file) return;
  if (file.size > MAX_FILE_BYTES) {
    status(file.name + " is " + file.size + " bytes, over the page's limit of " + MAX_FILE_BYTES, true);
    return;
  }
  const depth = $("#as").value === "depth" || /\.npy$/i.test(file.name);
  const reader = new FileReader();
  reader.onload = () => {
    let uri = reader.result;  // data:<type>;base64,...
    if (uri.startsWith("data:;") || uri.startsWith("data:application/octet-stream;")) {
      uri = "data:application/x-npy;" + uri.slice(uri.indexOf("base64,"));
    }
    const preview = $("#query-preview");
    preview.replaceChildren();
    if (file.type.startsWith("image/")) preview.append(element("img", { src: uri, alt: file.name }));
    else preview.append(element("span", {}, "Query: " + file.name));
    search(uri, depth ? "depth" : undefined);
  };
  reader.onerror = () => status("cannot read " + file.name, true);
  reader.readAsDataURL(file);
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchFile(event.dataTransfer.files[0]);
  });
  $("#file").addEventListener("change", (event) => searchFile(event.target.files[0]));
  $("#query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("#query").value.trim();
    if (!query) return;
    history.replaceState(null, "", "/?" + new URLSearchParams({ q: query }));  // a result can be linked
    $("#query-preview").replaceChildren();
    search(query);
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#key").value);
    $("#key").value = "";
    $("#key-box").open = false;
    status("API key set for this tab.");
    const query = $("#query").value.trim();
    if (query) search(query);
  });
  const linked = new URLSearchParams(location.search).get("q");
  if (linked) {
    $("#query").value = linked;
    search(linked);
  }
});
