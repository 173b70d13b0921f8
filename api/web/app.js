// The WKD service's web page: jobs list, job page with live curves, submit and upload forms
// (studies live in studies.js, which uses the helpers defined here).
// Plain JavaScript, no dependencies; it talks to the JSON API of the same origin with the
// API key kept in sessionStorage (this tab only) and sent as a bearer header. The live curve
// reads GET /jobs/{id}/events with fetch() streaming (EventSource cannot send headers), and
// resumes a broken stream with Last-Event-ID. The charts are drawn by chart.js (drawChart).
"use strict";

const KEY = "wkd.apiKey";
const VIEWS = ["login", "view-jobs", "view-new", "view-job", "view-studies", "view-new-study",
  "view-study"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);
const DATE = { dateStyle: "short", timeStyle: "short" };
let catalog = null;
let cleanup = [];  // timers and streams of the current view, stopped on navigation

// ----------------------------------------------------------------------------- plumbing
function apiKey() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${apiKey()}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut("The service refused this key: enter a valid API key.");
    throw new Error("missing or invalid API key");
  }
  if (!response.ok) {
    const error = new Error(await errorText(response));
    error.status = response.status;  // 404: gone; 429 / 503: retry after retryAfter seconds
    error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
    throw error;
  }
  return response;
}

async function errorText(response) {
  try {
    const detail = (await response.json()).detail;
    if (Array.isArray(detail)) {
      return detail.map((e) => {
        const loc = (e.loc || []).filter((p) => p !== "body").join(".");
        return loc ? `${loc}: ${e.msg}` : e.msg;
      }).join("; ");
    }
    return typeof detail === "string" && detail ? detail : `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

// The items of the first `pages` pages of a list (GET /jobs, /studies), following
// next_page_token; `more` when older items remain.
async function listPages(path, pages) {
  const items = [];
  let token = "";
  for (let page = 0; page < pages; page++) {
    const query = token ? `&page_token=${encodeURIComponent(token)}` : "";
    const answer = await (await api(`${path}${query}`)).json();
    items.push(...answer.data);
    token = answer.next_page_token;
    if (!token) break;
  }
  return { items, more: Boolean(token) };
}

// Polls a list every 3 s (GET /jobs or /studies, 100 per page) into render(items); its
// "Show older" button adds a page, and a failed refresh says so and keeps polling.
function pollList(path, render, moreId, statusId) {
  let pages = 1;
  const load = async () => {
    try {
      const { items, more } = await listPages(path, pages);
      render(items);
      $(moreId).hidden = !more;
      $(statusId).textContent = "";
    } catch (error) {
      $(statusId).textContent = `Could not refresh (${error.message}); retrying.`;
    }
  };
  const more = () => { pages += 1; load(); };
  $(moreId).addEventListener("click", more);
  const timer = setInterval(load, 3000);  // before the first answer: leaving stops it
  cleanup.push(() => { clearInterval(timer); $(moreId).removeEventListener("click", more); });
  return load();
}

// A job or study id from the URL: only the characters ids have (the rest of the link is
// never pasted into an API path).
function idFromHash(rest) {
  let id;
  try { id = decodeURIComponent(rest); } catch (_) { return null; }
  return /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : null;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function fmt(value, digits = 2) { return value === null || value === undefined ? "–" : value.toFixed(digits); }

function describe(method, teacher, student) {
  return teacher ? `${teacher} → ${student || "?"}` : (student || "?");
}

function fraction(p) {
  if (!p.total) return 0;
  const within = p.batches ? p.batch / p.batches : 0;
  return Math.min(1, (p.epoch + within) / p.total);
}

function progressText(p) {
  let text = `epoch ${p.epoch}/${p.total}`;
  if (p.batch && p.batches && p.epoch < p.total) text += ` · batch ${p.batch}/${p.batches}`;
  return text;
}

// ------------------------------------------------------------------------------- views
function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  $("nav").hidden = view === "login";
}

function stopView() {
  for (const stop of cleanup) stop();
  cleanup = [];
}

function route() {
  stopView();
  if (!apiKey()) { show("login"); $("key-input").focus(); return; }
  const hash = location.hash || "#/";
  const jobId = hash.startsWith("#/jobs/") ? idFromHash(hash.slice("#/jobs/".length)) : null;
  const studyId = hash.startsWith("#/studies/") ? idFromHash(hash.slice("#/studies/".length))
    : null;
  if (jobId) jobPage(jobId);
  else if (hash === "#/new") newPage();
  else if (hash === "#/studies") studiesPage();
  else if (hash === "#/studies/new") newStudyPage();
  else if (studyId) studyPage(studyId);
  else jobsPage();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  stopView();
  $("login-error").textContent = message;
  show("login");
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  let response;
  try {
    response = await fetch("/jobs?page_size=1", { headers: { Authorization: `Bearer ${key}` } });
  } catch (error) {
    $("login-error").textContent = `The service did not answer (${error.message}).`;
    return;
  }
  if (!response.ok) {
    $("login-error").textContent = response.status === 401
      ? "This key is not valid." : `The service answered ${response.status}.`;
    return;
  }
  sessionStorage.setItem(KEY, key);
  $("key-input").value = "";
  $("login-error").textContent = "";
  route();
}

// ---------------------------------------------------------------------------- jobs list
async function jobsPage() {
  show("view-jobs");
  await pollList("/jobs?page_size=100", renderJobs, "jobs-more", "jobs-status");
}

function renderJobs(jobs) {
  const rows = jobs.map((job) => {
    const bar = el("div");
    bar.style.width = `${Math.round(fraction(job.progress) * 100)}%`;
    return el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}`, text: job.id })),
      el("td", {}, el("span", { class: `state ${job.status}`, text: job.status })),
      el("td", { text: job.method || "?" }),
      el("td", { text: describe(job.method, job.teacher_arch, job.student_arch) }),
      el("td", { text: job.dataset || "?" }),
      el("td", {}, el("span", { class: "mini" }, bar), progressText(job.progress)),
      el("td", { class: "num", text: job.best_top1 === null ? "–" : `${fmt(job.best_top1)}%` }),
      el("td", { text: new Date(job.created_at).toLocaleString([], DATE) }));
  });
  $("jobs-body").replaceChildren(...rows);
  $("jobs-empty").hidden = jobs.length > 0;
}

// ------------------------------------------------------------------------ submit / upload
async function loadCatalog() {
  if (catalog) return catalog;
  catalog = await (await api("/catalog")).json();
  const fill = (select, names) => select.append(...names.map((n) => el("option", { value: n, text: n })));
  fill($("f-preset"), catalog.presets);
  fill($("f-method"), Object.keys(catalog.methods));
  fill($("f-student"), Object.keys(catalog.architectures));
  fill($("f-dataset"), Object.keys(catalog.datasets));
  fill($("u-arch"), Object.keys(catalog.architectures));
  return catalog;
}

// Every upload of the key, following the page tokens of GET /checkpoints.
async function allCheckpoints() {
  const all = [];
  let token = "";
  do {
    const query = token ? `?page_token=${encodeURIComponent(token)}` : "";
    const page = await (await api(`/checkpoints${query}`)).json();
    all.push(...page.data);
    token = page.next_page_token;
  } while (token);
  return all;
}

// Fills <select id=selectId> with the key's uploaded teachers (cost matrices are not teachers).
async function loadTeachers(selected = null, selectId = "f-teacher", none = "(none)") {
  const list = (await allCheckpoints()).filter((c) => c.kind === "teacher");
  const options = list.map((c) => el("option", {
    value: c.id, "data-arch": c.arch,
    text: `${c.filename} · ${c.arch}, ${c.num_classes} classes · ${c.id}`,
  }));
  $(selectId).replaceChildren(el("option", { value: "", text: none }), ...options);
  if (selected) $(selectId).value = selected;
}

async function newPage() {
  show("view-new");
  try {
    await loadCatalog();
    await loadTeachers($("f-teacher").value || null);
  } catch (error) { $("submit-error").textContent = error.message; }
}

function deepMerge(base, update) {
  const out = Object.assign({}, base);
  for (const [k, v] of Object.entries(update)) {
    out[k] = v && typeof v === "object" && !Array.isArray(v) && typeof out[k] === "object"
      ? deepMerge(out[k], v) : v;
  }
  return out;
}

function formBody() {
  const body = {};
  const value = (id) => $(id).value.trim();
  if (value("f-preset")) body.preset = value("f-preset");
  if (value("f-method")) body.method = value("f-method");
  if (value("f-teacher")) {  // the checkpoint's architecture wins over a preset's teacher
    const option = $("f-teacher").selectedOptions[0];
    body.teacher = { checkpoint_id: value("f-teacher"), arch: option.dataset.arch };
  }
  if (value("f-student")) body.student = { arch: value("f-student") };
  const dataset = {};
  if (value("f-dataset")) dataset.name = value("f-dataset");
  if (value("f-subset")) dataset.train_subset_per_class = Number(value("f-subset"));
  if (Object.keys(dataset).length) body.dataset = dataset;
  const training = {};
  if (value("f-epochs")) training.epochs = Number(value("f-epochs"));
  if (value("f-batch")) training.batch_size = Number(value("f-batch"));
  if (Object.keys(training).length) body.training = training;
  if (value("f-extra")) {
    let extra;
    try { extra = JSON.parse(value("f-extra")); } catch (_) {
      throw new Error("More fields: not valid JSON");
    }
    return deepMerge(body, extra);
  }
  return body;
}

// 128 random bits as hex (crypto.randomUUID exists only on https or localhost pages).
function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// One Idempotency-Key per form content: a double click or a retry after a lost answer
// replays the same job instead of queueing a second one; a changed form is a new job.
let submission = { body: null, key: null };

async function submitJob(event) {
  event.preventDefault();
  $("submit-error").textContent = "";
  const button = event.submitter || $("submit-form").querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    const body = JSON.stringify(formBody());
    if (submission.body !== body) submission = { body, key: randomKey() };
    const response = await api("/jobs", {
      method: "POST", body,
      headers: { "Content-Type": "application/json", "Idempotency-Key": submission.key },
    });
    const job = await response.json();
    submission = { body: null, key: null };
    location.hash = `#/jobs/${job.id}`;
  } catch (error) {
    $("submit-error").textContent = error.message;
  } finally {
    if (button) button.disabled = false;
  }
}

async function uploadTeacher(event) {
  event.preventDefault();
  $("upload-error").textContent = "";
  $("upload-result").textContent = "";
  const form = new FormData();
  form.append("file", $("u-file").files[0]);
  form.append("arch", $("u-arch").value);
  form.append("num_classes", $("u-classes").value);
  try {
    const checkpoint = await (await api("/checkpoints", { method: "POST", body: form })).json();
    $("upload-result").textContent =
      `Uploaded ${checkpoint.id} (sha256 ${checkpoint.sha256.slice(0, 12)}…); selected as teacher.`;
    await loadTeachers(checkpoint.id);
  } catch (error) { $("upload-error").textContent = error.message; }
}

// ----------------------------------------------------------------------------- job page
async function jobPage(id) {
  show("view-job");
  $("job-title").textContent = id;
  const state = { job: null, curve: [] };
  const controller = new AbortController();
  cleanup.push(() => controller.abort());
  try {
    state.job = await (await api(`/jobs/${id}`, { signal: controller.signal })).json();
  } catch (error) {
    if (!controller.signal.aborted) $("job-what").textContent = error.message;
    return;
  }
  if (controller.signal.aborted) return;  // the user went on to another page meanwhile
  state.curve = state.job.curve;
  renderJob(state);
  if (!state.job.is_terminal) follow(id, state, controller.signal);
}

async function follow(id, state, signal) {
  let lastId = null;
  let delay = 2000;  // doubles while reconnects fail (to 30 s), as the server's Retry-After says
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(`/jobs/${id}/events`, { headers, signal });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          lastId = event.id || lastId;  // past an unreadable event too: never replay it
          delay = 2000;
          if (event.data === null) continue;
          if (onEvent(state, event)) {
            state.job = await (await api(`/jobs/${id}`, { signal })).json();
            state.curve = state.job.curve;
            renderJob(state);
            return;
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status === 404) {  // the job is gone (or never was): nothing to follow
        $("job-what").textContent = error.message;
        return;
      }
      console.warn("event stream broke; resuming", error);
      delay = Math.min(30000, Math.max(delay * 2, (error.retryAfter || 0) * 1000));
    }
    await sleep(delay);  // the stream closed: resume where it stopped
  }
}

function parseEvent(block) {
  const fields = {};
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") data.push(value); else fields[name] = value;
  }
  if (!data.length) return null;
  let parsed = null;
  try { parsed = JSON.parse(data.join("\n")); } catch (_) { /* skipped, its id kept */ }
  return { id: fields.id, event: fields.event || "message", data: parsed };
}

// Applies one event; returns true at the end of the job.
function onEvent(state, { event, data }) {
  const job = state.job;
  if (event === "epoch") {
    const { total, ...row } = data;
    if (!state.curve.length || row.epoch > state.curve[state.curve.length - 1].epoch) state.curve.push(row);
    job.progress = Object.assign({}, job.progress, { epoch: row.epoch, batch: 0 });
    if (job.best_top1 === null || row.test_top1 > job.best_top1) {
      job.best_top1 = row.test_top1;
      job.best_epoch = row.epoch;
    }
  } else if (event === "progress") {
    job.progress = data;
  } else if (event === "state") {
    Object.assign(job, data);
  }
  renderJob(state);
  return event === "state" && TERMINAL.has(data.status);
}

function renderJob({ job, curve }) {
  const badge = $("job-state");
  badge.className = `state ${job.status}`;
  badge.textContent = job.status;
  const spec = job.spec || {};
  const epochs = (spec.training || {}).epochs;
  $("job-what").textContent = `${spec.method} · ${describe(spec.method, (spec.teacher || {}).arch,
    (spec.student || {}).arch)} · ${(spec.dataset || {}).name} · ${epochs} epochs`
    + (spec.preset ? ` · preset ${spec.preset}` : "");
  const message = [job.failure_reason, job.message].filter(Boolean).join(": ");
  $("job-message").hidden = !message;
  $("job-message").className = `message ${job.status}`;
  $("job-message").textContent = message;
  $("job-bar").style.width = `${Math.round(fraction(job.progress) * 100)}%`;
  $("job-progress").textContent = progressText(job.progress);
  $("job-best").textContent = job.best_top1 === null || job.best_top1 === undefined ? ""
    : `best top-1 ${fmt(job.best_top1)}% (epoch ${job.best_epoch})`;
  $("job-cancel").hidden = TERMINAL.has(job.status) || job.status === "cancelling";
  $("job-cancel").onclick = () => cancelJob(job.id);
  const total = Math.max(job.progress.total || 1, curve.length);
  drawChart($("chart-acc"), total, [
    { name: "test top-1", cls: "test", color: "#175cd3", points: curve.map((m) => [m.epoch, m.test_top1]) },
    { name: "train top-1", cls: "train", color: "#9aa5b1", points: curve.map((m) => [m.epoch, m.train_top1]) },
  ], { min: 0, max: 100 });
  drawChart($("chart-loss"), total, [
    { name: "test loss", cls: "test", color: "#b42318", points: curve.map((m) => [m.epoch, m.test_loss]) },
    { name: "train loss", cls: "train", color: "#a15c07", points: curve.map((m) => [m.epoch, m.train_loss]) },
  ], { min: 0 });
  $("job-spec").textContent = JSON.stringify(spec, null, 2);
  renderArtifacts(job);
}

async function cancelJob(id) {
  try {
    const job = await (await api(`/jobs/${id}/cancel`, { method: "POST" })).json();
    $("job-state").className = `state ${job.status}`;
    $("job-state").textContent = job.status;
  } catch (error) { $("job-what").textContent = error.message; }
}

function renderArtifacts(job) {
  const items = (job.artifacts || []).map((a) => el("li", {},
    el("span", {}, el("code", { text: a.name }), ` · ${a.kind} · ${(a.size / 1024).toFixed(1)} KiB`),
    el("button", { class: "small", type: "button", text: "Download", onclick: () => download(a) })));
  const empty = el("li", { class: "muted", text: job.is_terminal ? "none" : "when the job ends" });
  $("job-artifacts").replaceChildren(...(items.length ? items : [empty]));
}

async function download(artifact) {
  let blob;
  try {
    blob = await (await api(artifact.url)).blob();
  } catch (error) {
    $("job-what").textContent = `Could not download ${artifact.name}: ${error.message}`;
    return;
  }
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: artifact.name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -------------------------------------------------------------------------------- start
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("submit-form").addEventListener("submit", submitJob);
  $("upload-form").addEventListener("submit", uploadTeacher);
  window.addEventListener("hashchange", route);
  route();
});
