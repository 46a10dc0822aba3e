// Generate page: a grid from a run's generator, and an interpolation strip between two seeds. A
// translation run has no latents: the page links to its Translate page instead.
"use strict";
let runs = [];

function current() { return runs.find(r => r.id === $("run").value); }

function params(extra) {
  const q = new URLSearchParams();
  q.set("checkpoint", $("checkpoint").value);
  const t = $("truncation").value;
  if (t) q.set("truncation", t);
  if ($("class").value !== "" && current().num_classes) q.set("class", $("class").value);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return q;
}

function showRun() {
  const r = current();
  $("checkpoint").replaceChildren(...r.checkpoints.map(c => {
    const o = el("option", { value: c }, c); if (c === r.default_checkpoint) o.selected = true; return o; }));
  const cls = $("class");
  cls.replaceChildren(el("option", { value: "" }, "every class"));
  if (r.num_classes) for (let k = 0; k < r.num_classes; k++) cls.append(el("option", { value: String(k) }, String(k)));
  $("class-label").classList.toggle("hidden", !r.num_classes);
  $("translate-note").classList.toggle("hidden", !r.translation);
  if (r.translation) $("translate-link").href = r.translate_url;
  for (const id of ["go", "random", "interp"]) $(id).disabled = r.translation;
  $("run-info").textContent = `${r.family.toUpperCase()} ${r.model} · ${r.dataset} ${r.resolution}×${r.resolution}` +
    (r.step !== null ? ` · step ${r.step}` : "") +
    (r.translation ? ` · translates ${r.directions.join(" and ")}` : r.num_classes ? ` · ${r.num_classes} classes` : " · unconditional");
}

async function load(img, link, url) {
  $("error").textContent = "";
  const res = await fetch(url);
  if (!res.ok) {
    let msg = `${res.status}`; try { msg = (await res.json()).error; } catch (e) { /* not JSON */ }
    $("error").textContent = msg; return null;
  }
  const blob = await res.blob();
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.classList.remove("hidden");
  link.href = url + "&download=1";
  link.classList.remove("hidden");
  return res.headers.get("X-Seed");
}

async function generate() {
  if (current().translation) return;
  const q = params({ n: $("n").value });
  if ($("seed").value !== "") q.set("seed", $("seed").value);
  const seed = await load($("grid"), $("download"), `/api/runs/${current().id}/grid.png?${q}`);
  if (seed !== null) { $("seed").value = seed; $("seed-used").textContent = `seed ${seed}: the same seed gives the same images`; }
}

async function interpolate() {
  if (current().translation) return;
  const q = params({ seed_a: $("seed-a").value, seed_b: $("seed-b").value, frames: $("frames").value });
  await load($("strip"), $("download-strip"), `/api/runs/${current().id}/interpolation.png?${q}`);
}

async function init() {
  try { runs = (await api("/api/runs")).runs; } catch (e) { $("error").textContent = e.message; return; }
  $("run").replaceChildren(...runs.map(r => el("option", { value: r.id }, `${r.id}: ${r.name}` + (r.translation ? " (translation)" : ""))));
  translateNav(runs);
  // ?run=ID picks a run; else the first that generates (a translation run has nothing to show here)
  const asked = new URLSearchParams(location.search).get("run");
  const first = runs.find(r => r.id === asked) || runs.find(r => !r.translation) || runs[0];
  $("run").value = first.id;
  showRun();
  $("run").addEventListener("change", () => { $("error").textContent = ""; showRun(); });
  $("go").addEventListener("click", generate);
  $("random").addEventListener("click", () => { $("seed").value = ""; generate(); });
  $("interp").addEventListener("click", interpolate);
  generate();
}
init();
