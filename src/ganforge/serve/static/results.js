// Results page (needs the evaluator key): HYPE-infinity per run, refreshed every few seconds.
"use strict";
const study = location.pathname.split("/").pop();
const key = new URLSearchParams(location.search).get("key") || "";

async function refresh() {
  let r;
  try { r = await api(`/api/studies/${study}/results?key=${encodeURIComponent(key)}`); }
  catch (e) { $("error").textContent = e.message; return; }
  $("error").textContent = "";
  $("title").textContent = `Results · ${r.name}`;
  $("metric").textContent = r.metric;
  $("table").replaceChildren(...Object.entries(r.runs).map(([run, s]) => {
    const tr = el("tr", { "data-run": run });
    if (!s) { tr.append(el("td", {}, run), el("td", { colspan: "6", class: "muted" }, "no answers yet")); return tr; }
    tr.append(el("td", {}, run), el("td", { class: "error-rate" }, pct(s.error_rate)),
      el("td", {}, `${pct(s.ci95[0])} – ${pct(s.ci95[1])}`), el("td", {}, pct(s.false_real_rate)),
      el("td", {}, pct(s.false_fake_rate)), el("td", { class: "answers" }, String(s.answers)), el("td", {}, String(s.raters)));
    return tr;
  }));
  const runs = Object.entries(r.protocol.runs).map(([name, p]) =>
    `${name}: ${p.checkpoint} (step ${p.step}), real images from ${p.real}`).join("; ");
  $("protocol").textContent = `${r.votes} answers from ${r.raters_joined} rater${r.raters_joined === 1 ? "" : "s"} · ${r.protocol.real_per_rater} real + ` +
    `${r.protocol.fake_per_rater} generated images per rater and run · ${runs} · CI: ` +
    (Object.values(r.runs).find(s => s) || { ci_method: "–" }).ci_method;
  $("fooling").replaceChildren(...r.most_fooling.map(f => {
    const fig = el("figure");
    fig.append(el("img", { src: `/api/images/${f.image}`, class: "pixel", alt: "generated" }),
      el("figcaption", {}, `${f.run}: ${f.judged_real}/${f.answers} said real`));
    return fig;
  }));
  if (!r.most_fooling.length) $("fooling").textContent = "No generated image has been judged real yet.";
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

$("csv").href = `/api/studies/${study}/votes.csv?key=${encodeURIComponent(key)}`;
refresh();
setInterval(refresh, 3000);
