// Shared helpers for the ganforge pages: JSON requests with readable errors.
"use strict";
async function api(path, options = {}) {
  const init = { ...options, headers: { "Content-Type": "application/json", ...(options.headers || {}) } };
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}
function $(id) { return document.getElementById(id); }
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}
// the header's Translate link, shown only where translation runs are served (to the first of them)
function translateNav(runs) {
  const first = runs.find(r => r.translation);
  if (first && $("nav-translate")) { $("nav-translate").href = first.translate_url; $("nav-translate").classList.remove("hidden"); }
}
function pct(x) { return (x === null || x === undefined || Number.isNaN(x)) ? "–" : (100 * x).toFixed(1) + "%"; }
