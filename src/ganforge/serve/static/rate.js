// Rater page: join with a name, see labelled examples, then judge each image once (R / F keys).
// The server sends only opaque image ids; whether an image is real never reaches this page.
"use strict";
const study = location.pathname.split("/").pop();
const SESSION = `ganforge-rater-${study}`;
let state = null, shownAt = 0, busy = false;

function show(id) { for (const s of ["join", "tutorial", "judge", "done"]) $(s).classList.toggle("hidden", s !== id); }

function render() {
  if (!state.next) { show("done"); return; }
  show("judge");
  $("progress").textContent = `${state.answered + 1} of ${state.total}`;
  $("image").src = `/api/images/${state.next}`;
  shownAt = performance.now();
}

async function vote(answer) {
  if (busy || !state || !state.next) return;
  busy = true; $("vote-error").textContent = "";
  try {
    state = await api(`/api/raters/${state.rater}/votes`, { method: "POST",
      body: JSON.stringify({ image: state.next, answer, ms: Math.round(performance.now() - shownAt) }) });
    render();
  } catch (e) {
    $("vote-error").textContent = e.message;
    try { state = await api(`/api/raters/${state.rater}`); render(); } catch (e2) { /* keep the message */ }
  }
  busy = false;
}

async function tutorial() {
  const { examples } = await api(`/api/studies/${study}/tutorial`);
  $("examples").replaceChildren(...examples.map(x => {
    const fig = el("figure");
    fig.append(el("img", { src: `/api/images/${x.image}`, class: "pixel", alt: x.truth }),
      el("figcaption", { class: `tag-${x.truth}` }, x.truth));
    return fig;
  }));
  show("tutorial");
}

async function start() {
  $("join-error").textContent = "";
  try {
    state = await api(`/api/studies/${study}/raters`, { method: "POST", body: JSON.stringify({ name: $("name").value }) });
    sessionStorage.setItem(SESSION, state.rater);
    await tutorial();
  } catch (e) { $("join-error").textContent = e.message; }
}

async function init() {
  $("start").addEventListener("click", start);
  $("name").addEventListener("keydown", e => { if (e.key === "Enter") start(); });
  $("begin").addEventListener("click", render);
  $("real").addEventListener("click", () => vote("real"));
  $("fake").addEventListener("click", () => vote("fake"));
  document.addEventListener("keydown", e => {
    if (e.repeat || $("judge").classList.contains("hidden") || e.target.tagName === "INPUT") return;  // a held key is one answer
    if (e.key === "r" || e.key === "R") vote("real");
    if (e.key === "f" || e.key === "F") vote("fake");
  });
  const saved = sessionStorage.getItem(SESSION);
  if (saved) {  // a reload: carry on where this rater stopped
    try { state = await api(`/api/raters/${saved}`); render(); return; } catch (e) { sessionStorage.removeItem(SESSION); }
  }
  try {  // the study's name, for the title (its id is in this page's link)
    const res = await fetch(`/api/studies/${encodeURIComponent(study)}`);
    const data = await res.json().catch(() => ({}));
    if (res.ok) $("title").textContent = `Real or fake? · ${data.name}`;
    else if (res.status === 404) { $("join-error").textContent = "This study does not exist: check the link."; $("start").disabled = true; }
    else $("join-error").textContent = data.error || `${res.status} ${res.statusText}`;
  } catch (e) { $("join-error").textContent = e.message; }
}
init();
