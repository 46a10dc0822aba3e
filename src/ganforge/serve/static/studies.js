// Studies page: create a study (the evaluator key stays in this browser's storage) and list them.
// Both need the server's admin key: `ganforge serve` prints this page's link with it (?key=...); the
// page keeps it in this browser, drops it from the address bar, and sends it as a header.
"use strict";
const KEYS = "ganforge-study-keys";
const ADMIN = "ganforge-admin-key";
function keys() { try { return JSON.parse(localStorage.getItem(KEYS)) || {}; } catch (e) { return {}; } }
function adminKey() {
  const given = new URLSearchParams(location.search).get("key");
  if (given) { localStorage.setItem(ADMIN, given); history.replaceState(null, "", location.pathname); }
  return localStorage.getItem(ADMIN) || "";
}
const admin = adminKey();
function asAdmin(options = {}) { return { ...options, headers: { ...(options.headers || {}), "X-Admin-Key": admin } }; }

async function refresh() {
  const { studies } = await api("/api/studies", asAdmin());
  const mine = keys();
  $("list").replaceChildren(...studies.map(s => {
    const tr = el("tr");
    tr.append(el("td", {}, s.name), el("td", {}, s.runs.join(", ")),
      el("td", {}, `${s.real_per_rater} real + ${s.fake_per_rater} generated per run`),
      el("td", {}, String(s.raters)), el("td", {}, String(s.votes)));
    const links = el("td");
    links.append(el("a", { href: `/rate/${s.id}` }, "rate"));
    if (mine[s.id]) { links.append(" · "); links.append(el("a", { href: `/results/${s.id}?key=${encodeURIComponent(mine[s.id])}` }, "results")); }
    tr.append(links);
    return tr;
  }));
}

async function create() {
  $("error").textContent = "";
  const runs = [...document.querySelectorAll("#runs input:checked")].map(i => i.value);
  const body = { name: $("name").value, runs, real_per_rater: +$("per").value, fake_per_rater: +$("per").value };
  $("create").disabled = true; $("create").textContent = "Creating…";
  try {
    const made = await api("/api/studies", asAdmin({ method: "POST", body: JSON.stringify(body) }));
    const mine = keys(); mine[made.id] = made.admin_key; localStorage.setItem(KEYS, JSON.stringify(mine));
    $("rate-link").textContent = location.origin + made.rate_url;
    $("results-link").textContent = location.origin + made.results_url;
    $("results-link").href = made.results_url;
    $("created").classList.remove("hidden");
    await refresh();
  } catch (e) { $("error").textContent = e.message; }
  $("create").disabled = false; $("create").textContent = "Create study";
}

async function init() {
  const all = (await api("/api/runs")).runs;
  translateNav(all);
  const runs = all.filter(r => !r.translation);  // a study compares samples of latents with real images
  const translators = all.filter(r => r.translation);
  if (translators.length) {
    $("translation-runs").textContent = `Not offered: ${translators.map(r => `${r.id}: ${r.name}`).join(", ")} ` +
      "(translation models: they translate images and have no samples to judge).";
    $("translation-runs").classList.remove("hidden");
  }
  // every run `ganforge serve` was started with is pre-selected: a study usually compares them all
  $("runs").replaceChildren(...runs.map(r => {
    const label = el("label", { class: "check" });
    const box = el("input", { type: "checkbox", value: r.id, id: `run-${r.id}` });
    box.checked = true;
    label.append(box, ` ${r.id}: ${r.name} (${r.family}, ${r.dataset}, step ${r.step})`);
    return label;
  }));
  $("create").addEventListener("click", create);
  if (!admin) {
    $("error").textContent = "This page needs the admin key that `ganforge serve` printed at start: open the " +
      "Studies link it printed (…/studies?key=…).";
    $("create").disabled = true;
    return;
  }
  await refresh();
}
init().catch(e => { $("error").textContent = e.message; });
