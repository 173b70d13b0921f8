// Studies on the web page: the list (GET /studies), the form (POST /studies: methods × seeds
// over one teacher, student and dataset) and a study's page (GET /studies/{id}, polled while
// it runs): every member job's state and progress linked to its job page, and the summary
// (mean ± std of best and last top-1 per method, difference to KD). Loaded after app.js, whose
// helpers ($, el, api, show, cleanup, fmt, fraction, progressText, describe, …) it uses.
"use strict";

const STUDY_DEFAULT_METHODS = ["vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf"];
const STUDY_DONE = new Set(["succeeded", "finished_with_failures"]);
let studyFormReady = false;

// ------------------------------------------------------------------------------ list
async function studiesPage() {
  show("view-studies");
  await pollList("/studies?page_size=100", renderStudies, "studies-more", "studies-status");
}

function renderStudies(studies) {
  const rows = studies.map((study) => {
    const ended = ["succeeded", "failed", "cancelled"]
      .reduce((n, s) => n + (study.job_states[s] || 0), 0);
    const bar = el("div");
    bar.style.width = `${study.jobs ? Math.round((ended / study.jobs) * 100) : 0}%`;
    return el("tr", { "data-study": study.id },
      el("td", {}, el("a", { href: `#/studies/${study.id}`, text: study.id })),
      el("td", {}, el("span", { class: `state ${study.status}`, text: studyState(study.status) })),
      el("td", { text: describe(null, study.teacher_arch, study.student_arch) }),
      el("td", { text: study.dataset }),
      el("td", { text: `${study.methods.join(", ")} × ${plural(study.seeds.length, "seed")}` }),
      el("td", { class: "num", text: study.epochs ?? "from presets" }),
      el("td", {}, el("span", { class: "mini" }, bar), `${ended}/${study.jobs}`),
      el("td", { text: new Date(study.created_at).toLocaleString([], DATE) }));
  });
  $("studies-body").replaceChildren(...rows);
  $("studies-empty").hidden = studies.length > 0;
}

function studyState(status) { return status.replaceAll("_", " "); }

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// ------------------------------------------------------------------------------ form
// "<teacher>_<student>" split where both halves are architectures (names contain "_").
function splitPair(pair, architectures) {
  for (let i = pair.indexOf("_"); i > 0; i = pair.indexOf("_", i + 1)) {
    const teacher = pair.slice(0, i), student = pair.slice(i + 1);
    if (teacher in architectures && student in architectures) return [teacher, student];
  }
  return null;
}

// The classification (dataset, teacher, student) pairs of the released presets.
function presetPairs(cat) {
  const pairs = new Map();
  for (const name of cat.presets) {
    const [dataset, method, pair] = name.split("/");
    const split = pair && method in cat.methods && cat.datasets[dataset]
      && cat.datasets[dataset].input_kind !== "detection" ? splitPair(pair, cat.architectures) : null;
    if (!split) continue;
    const key = `${dataset}/${pair}`;
    if (!pairs.has(key)) pairs.set(key, { dataset, teacher: split[0], student: split[1], methods: [] });
    pairs.get(key).methods.push(method);
  }
  return [...pairs.entries()];
}

async function newStudyPage() {
  show("view-new-study");
  try {
    const cat = await loadCatalog();
    if (!studyFormReady) fillStudyForm(cat);
    studyFormReady = true;
    await loadTeachers($("s-teacher").value || null, "s-teacher", "(choose)");
    studyHint();
  } catch (error) { $("study-error").textContent = error.message; }
}

function fillStudyForm(cat) {
  const options = (names) => names.map((n) => el("option", { value: n, text: n }));
  $("s-pair").append(...presetPairs(cat).map(([key, p]) => el("option", {
    value: key, text: `${p.dataset} · ${p.teacher} → ${p.student} (${p.methods.join(", ")})`,
  })));
  $("s-student").append(...options(Object.keys(cat.architectures)));
  $("s-dataset").append(...options(Object.keys(cat.datasets)
    .filter((d) => cat.datasets[d].input_kind !== "detection")));
  $("s-methods").append(...Object.keys(cat.methods).map((m) => el("label", {},
    el("input", Object.assign({ type: "checkbox", value: m, name: "method" },
      STUDY_DEFAULT_METHODS.includes(m) ? { checked: "" } : {})), m)));
}

function applyPair() {
  const key = $("s-pair").value;
  if (!key) return studyHint();
  const pair = new Map(presetPairs(catalog)).get(key);
  $("s-student").value = pair.student;
  $("s-dataset").value = pair.dataset;
  const teacher = [...$("s-teacher").options].find((o) => o.dataset.arch === pair.teacher);
  if (teacher && !$("s-teacher").value) $("s-teacher").value = teacher.value;
  studyHint(pair.teacher);
}

// Says which of the chosen methods start from a released preset for the chosen pair.
function studyHint(wanted = null) {
  if (!catalog) return;
  const option = $("s-teacher").selectedOptions[0];
  const teacher = option && option.value ? option.dataset.arch : null;
  const student = $("s-student").value, dataset = $("s-dataset").value;
  const methods = checkedMethods();
  let text = "";
  if (wanted && teacher !== wanted) {
    text = `The presets of this pair are for a ${wanted} teacher: choose (or upload) one. `;
  }
  if (teacher && student && dataset && methods.length) {
    const presets = new Set(catalog.presets);
    const have = methods.filter((m) => presets.has(`${dataset}/${m}/${teacher}_${student}`));
    const rest = methods.filter((m) => !have.includes(m));
    text += have.length ? `From released presets: ${have.join(", ")}. ` : "";
    text += rest.length ? `With the method's defaults: ${rest.join(", ")}. ` : "";
    text += `${methods.length * parseSeeds(true).length} jobs.`;
  }
  $("s-hint").textContent = text;
}

function checkedMethods() {
  return [...$("s-methods").querySelectorAll("input:checked")].map((input) => input.value);
}

function parseSeeds(lenient = false) {
  const parts = $("s-seeds").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!lenient && (!parts.length || parts.some((s) => !/^\d+$/.test(s)))) {
    throw new Error("Seeds: non-negative whole numbers separated by commas");
  }
  return parts.filter((s) => /^\d+$/.test(s)).map(Number);
}

function studyBody() {
  const value = (id) => $(id).value.trim();
  const methods = checkedMethods();
  if (!methods.length) throw new Error("Methods: tick at least one");
  const body = {
    teacher: { checkpoint_id: value("s-teacher") },
    student: { arch: value("s-student") },
    dataset: { name: value("s-dataset") },
    methods,
    seeds: parseSeeds(),
  };
  if (value("s-subset")) body.dataset.train_subset_per_class = Number(value("s-subset"));
  const training = {};
  if (value("s-epochs")) training.epochs = Number(value("s-epochs"));
  if (value("s-batch")) training.batch_size = Number(value("s-batch"));
  if (Object.keys(training).length) body.training = training;
  if (!value("s-extra")) return body;
  let extra;
  try { extra = JSON.parse(value("s-extra")); } catch (_) {
    throw new Error("More fields: not valid JSON");
  }
  return deepMerge(body, extra);
}

async function submitStudy(event) {
  event.preventDefault();
  $("study-error").textContent = "";
  const button = event.submitter || $("study-form").querySelector("button[type=submit]");
  if (button) button.disabled = true;  // a double click must not create the study twice
  try {
    const response = await api("/studies", {
      method: "POST", body: JSON.stringify(studyBody()),
      headers: { "Content-Type": "application/json" },
    });
    location.hash = `#/studies/${(await response.json()).id}`;
  } catch (error) {
    $("study-error").textContent = error.message;
  } finally {
    if (button) button.disabled = false;
  }
}

// ------------------------------------------------------------------------------ study page
async function studyPage(id) {
  show("view-study");
  $("study-title").textContent = id;
  let stopped = false;
  cleanup.push(() => { stopped = true; });
  while (!stopped) {
    let study;
    try {
      study = await (await api(`/studies/${id}`)).json();
    } catch (error) {
      if (stopped) return;
      if (error.status === 404) {  // no such study: nothing to poll
        $("study-what").textContent = error.message;
        return;
      }
      $("study-what").textContent = `Could not refresh (${error.message}); retrying.`;
      await sleep(Math.max(2000, (error.retryAfter || 0) * 1000));
      continue;
    }
    if (stopped) return;
    renderStudy(study);
    if (STUDY_DONE.has(study.status)) return;
    await sleep(2000);
  }
}

function renderStudy(study) {
  const spec = study.spec;
  $("study-state").className = `state ${study.status}`;
  $("study-state").textContent = studyState(study.status);
  const epochs = (spec.training || {}).epochs;
  $("study-what").textContent = `${describe(null, spec.teacher.arch, spec.student.arch)} · `
    + `${spec.dataset.name} · ${plural(spec.methods.length, "method")} × `
    + `${plural(spec.seeds.length, "seed")} (${spec.seeds.join(", ")})`
    + (epochs ? ` · ${plural(epochs, "epoch")}` : "");
  const ended = study.jobs.filter((j) => TERMINAL.has(j.status)).length;
  const done = study.jobs.reduce((sum, j) => sum + (TERMINAL.has(j.status) ? 1 : fraction(j.progress)), 0);
  $("study-bar").style.width = `${Math.round((done / study.jobs.length) * 100)}%`;
  $("study-progress").textContent = `${ended}/${study.jobs.length} jobs ended`;
  $("study-jobs").replaceChildren(...study.jobs.map(studyJobRow));
  renderSummary(study);
}

function studyJobRow(job) {
  const bar = el("div");
  bar.style.width = `${Math.round(fraction(job.progress) * 100)}%`;
  const state = job.failure_reason ? `${job.status} (${job.failure_reason})` : job.status;
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `#/jobs/${job.id}`, text: job.id })),
    el("td", { text: job.method }),
    el("td", { class: "num", text: `${job.seed}` }),
    el("td", {}, el("span", { class: `state ${job.status}`, text: state })),
    el("td", {}, el("span", { class: "mini" }, bar), progressText(job.progress)),
    el("td", { class: "num", text: job.best_top1 === null ? "–" : `${fmt(job.best_top1)}%` }),
    el("td", { class: "num", text: job.last_top1 === null ? "–" : `${fmt(job.last_top1)}%` }));
}

function meanStd(stat) {
  if (stat.mean === null) return "–";
  return stat.std === null ? fmt(stat.mean) : `${fmt(stat.mean)} ± ${fmt(stat.std)}`;
}

function signed(value) {
  return value === null ? "–" : `${value >= 0 ? "+" : "−"}${Math.abs(value).toFixed(2)}`;
}

function renderSummary(study) {
  const any = study.summary.some((row) => row.best_top1.n > 0);
  $("summary").hidden = !any;
  $("summary-empty").hidden = any;
  $("summary-body").replaceChildren(...study.summary.map((row) => el("tr", { "data-method": row.method },
    el("td", { text: row.method }),
    el("td", { class: "num", text: `${row.best_top1.n}` }),
    el("td", { class: "num", text: meanStd(row.best_top1) }),
    el("td", { class: "num", text: meanStd(row.last_top1) }),
    el("td", { class: "num", text: signed(row.delta_vs_kd.best_top1) }),
    el("td", { class: "num", text: signed(row.delta_vs_kd.last_top1) }))));
  const ir = study.interrelations;
  $("study-ir").textContent = !ir.sha256.length ? ""
    : ir.shared ? `WKD-L / WKD-LF used one interrelation matrix (sha256 ${ir.sha256[0].slice(0, 12)}…).`
      : `WKD-L / WKD-LF used ${ir.sha256.length} different interrelation matrices.`;
}

// -------------------------------------------------------------------------------- start
document.addEventListener("DOMContentLoaded", () => {
  $("study-form").addEventListener("submit", submitStudy);
  $("s-pair").addEventListener("change", applyPair);
  for (const id of ["s-teacher", "s-student", "s-dataset", "s-methods", "s-seeds"]) {
    $(id).addEventListener("change", () => studyHint());
  }
});
