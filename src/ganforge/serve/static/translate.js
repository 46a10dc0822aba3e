// Translate page: a translation run's output for an uploaded image or one of its test inputs, beside
// the input as the model sees it (resized and converted by the server, as the model was trained).
"use strict";
let run = null;
let last = null;  // the last translation asked for: made again with another checkpoint
const DIRECTIONS = { a2b: "A → B", b2a: "B → A (the way back)" };

function blobOf(base64) {  // an object URL: the page's CSP lets images come from blob: but not fetch(data:)
  const bytes = Uint8Array.from(atob(base64), c => c.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
}

function query(extra = {}) {
  return new URLSearchParams({ checkpoint: $("checkpoint").value, direction: $("direction").value, ...extra });
}

async function show(res) {
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`; try { msg = (await res.json()).error; } catch (e) { /* not JSON */ }
    $("error").textContent = msg; return;
  }
  const r = await res.json();
  for (const id of ["input", "output"]) {
    if ($(id).src.startsWith("blob:")) URL.revokeObjectURL($(id).src);
    $(id).src = blobOf(r[`${id}_png`]);
  }
  $("download").href = $("output").src;
  $("download").download = r.filename;
  $("download").classList.remove("hidden");
  $("fitted").textContent = `${r.source}: ${r.fitted} · ${r.direction} · ${r.checkpoint}`;
  $("result").classList.remove("hidden");
}

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  last = upload;
  $("error").textContent = "";
  const res = await fetch(`/api/runs/${run.id}/translate?${query({ name: file.name })}`, {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
  await show(res);
}

async function translateTest(i) {
  last = () => translateTest(i);
  $("error").textContent = "";
  await show(await fetch(`/api/runs/${run.id}/translate?${query({ test: i })}`));
}

async function loadTests() {
  $("tests").replaceChildren();
  const d = $("direction").value;
  const info = await api(`/api/runs/${run.id}/test-inputs?direction=${d}`);
  $("tests").replaceChildren(...Array.from({ length: info.count }, (_, i) => {
    const b = el("button", { type: "button", class: "thumb", id: `test-${i}`, title: `test input ${i}` });
    b.append(el("img", { class: "pixel", alt: `test input ${i}`, src: `/api/runs/${run.id}/test-inputs/${i}.png?direction=${d}` }));
    b.addEventListener("click", () => translateTest(i));
    return b;
  }));
  $("tests-info").textContent = `the first ${info.count} inputs of ${info.dataset}` + (run.directions.length > 1 ? ` (domain ${d[0].toUpperCase()})` : "");
}

function showRun() {
  $("checkpoint").replaceChildren(...run.checkpoints.map(c => {
    const o = el("option", { value: c }, c); if (c === run.default_checkpoint) o.selected = true; return o; }));
  $("direction").replaceChildren(...run.directions.map(d => el("option", { value: d }, DIRECTIONS[d])));
  $("direction-label").classList.toggle("hidden", run.directions.length < 2);
  $("run-info").textContent = `${run.model} · ${run.dataset} ${run.resolution}×${run.resolution}` +
    (run.step !== null ? ` · step ${run.step}` : "") + (run.directions.length > 1 ? " · unpaired: two directions" : " · paired: one direction");
  $("file").setAttribute("accept", run.upload.types.join(","));
  $("upload-info").textContent = `PNG, JPEG, WebP, BMP or TIFF, up to ${run.upload.max_bytes / 1048576} MiB; ` +
    `other sizes are resized (shorter side, centre crop) to ${run.resolution}×${run.resolution}, as in training.`;
}

function clearResult() {
  last = null;
  $("result").classList.add("hidden"); $("download").classList.add("hidden");
  $("fitted").textContent = "Upload an image or pick a test input.";
}

async function init() {
  const runs = (await api("/api/runs")).runs.filter(r => r.translation);
  const key = decodeURIComponent(location.pathname.split("/").pop());
  run = runs.find(r => r.id === key) || runs[0];
  $("run").replaceChildren(...runs.map(r => {
    const o = el("option", { value: r.id }, `${r.id}: ${r.name}`); if (r === run) o.selected = true; return o; }));
  $("run").addEventListener("change", () => { location.href = runs.find(r => r.id === $("run").value).translate_url; });
  showRun();
  $("file").addEventListener("change", () => upload().catch(e => { $("error").textContent = e.message; }));
  $("direction").addEventListener("change", () => { clearResult(); $("file").value = ""; loadTests().catch(e => { $("error").textContent = e.message; }); });
  $("checkpoint").addEventListener("change", () => { if (last) last().catch(e => { $("error").textContent = e.message; }); });
  await loadTests();
}
init().catch(e => { $("error").textContent = e.message; });
