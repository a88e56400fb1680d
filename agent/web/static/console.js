// The console's pages: plain JS, no build step. Text from the cluster (module names,
// snapshot file names, error messages) only ever reaches the page as textContent.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const options = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  if (response.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const rows = data.errors || (data.output && Array.isArray(data.output) ? data.output : []);
    const details = rows.map((r) => r.error).filter(Boolean).join(", ");
    throw new Error((data.error || `HTTP ${response.status}`) + (details ? ` (${details})` : ""));
  }
  return data;
}

const action = (name, data, nowait) =>
  api("POST", `/api/actions/${name}${nowait ? "?nowait=1" : ""}`, data === undefined ? {} : data);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function bytes(count) {
  if (count === null || count === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(count), unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

const when = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "–");

function setText(id, text, error) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = text;
  node.classList.toggle("error", Boolean(error));
}

// --- every page ------------------------------------------------------------------------
function wireLogout() {
  const form = document.getElementById("logout-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": csrf() } });
    location.href = "/login";
  });
}

function formatStatic() {
  for (const node of document.querySelectorAll("[data-epoch]")) {
    node.textContent = when(Number(node.dataset.epoch));
  }
  for (const node of document.querySelectorAll("[data-bytes]")) {
    node.textContent = bytes(Number(node.dataset.bytes));
  }
}

// --- dashboard -------------------------------------------------------------------------
const progressRows = new Map(); // task id → <tr>

function progressCell(percent, status) {
  const bar = el("progress", { max: 100, value: percent });
  return el("td", { class: "progress" }, bar, el("span", { class: "percent" }, ` ${percent}% ${status}`));
}

function renderRunning(tasks) {
  const body = document.querySelector("#running tbody");
  body.replaceChildren();
  progressRows.clear();
  for (const task of tasks) {
    const details = task.data && typeof task.data === "object" ? JSON.stringify(task.data) : "";
    const row = el("tr", { "data-task": task.task },
      el("td", {}, task.agent), el("td", {}, task.action), el("td", {}, el("code", {}, details)),
      progressCell(0, "running"));
    progressRows.set(task.task, row);
    body.append(row);
  }
  document.getElementById("running-empty").hidden = tasks.length > 0;
}

function renderBackups(data) {
  const body = document.querySelector("#backups tbody");
  body.replaceChildren();
  for (const backup of data.backups) {
    const run = el("button", { class: "run-backup", "data-backup": backup.id }, "Run now");
    run.addEventListener("click", async () => {
      run.disabled = true;
      try { await action("cluster/run-backup", { id: backup.id }, true); }
      catch (error) { setText("live-status", error.message, true); run.disabled = false; }
    });
    const instances = backup.instances.length ? backup.instances : [null];
    instances.forEach((instance, index) => {
      const status = instance && instance.status;
      const outcome = status ? status.outcome : instance ? "never ran" : "no module";
      const overdue = !instance || instance.overdue === null ? "?" : instance.overdue ? "OVERDUE" : "no";
      const row = el("tr", { "data-backup": backup.id, "data-module": instance ? instance.module_id : "" },
        el("td", {}, index ? "" : `${backup.name} (${backup.id})${backup.enabled ? "" : " – disabled"}`),
        el("td", {}, instance ? el("a", { href: `/modules/${encodeURIComponent(instance.module_id)}` }, instance.module_id) : ""),
        el("td", { class: `outcome outcome-${status ? status.outcome : "none"}` },
          outcome, status && status.reason ? el("div", { class: "error-text" }, status.reason) : ""),
        // The overdue monitor's figure, else (before its first look) this run's own end.
        el("td", {}, when(instance && (instance.last_snapshot || (status && status.outcome !== "failed" && status.end)))),
        el("td", {}, status ? bytes(status.total_size) : "–"),
        el("td", {}, status ? String(status.snapshots_count ?? "–") : "–"),
        el("td", { class: overdue === "OVERDUE" ? "overdue" : "" }, overdue),
        el("td", {}, when(instance && instance.next_run)),
        el("td", {}, index ? "" : run));
      body.append(row);
    });
  }
  const loose = data.unconfigured_instances.map((m) => m.id);
  setText("unconfigured", loose.length ? `In no backup: ${loose.join(", ")}` : "");
}

function renderDestinations(rows) {
  const body = document.querySelector("#destinations tbody");
  body.replaceChildren();
  for (const row of rows) {
    body.append(el("tr", {},
      el("td", {}, row.name || row.id), el("td", {}, row.provider), el("td", {}, String(row.modules)),
      el("td", {}, bytes(row.stored_bytes)), el("td", {}, bytes(row.free_bytes))));
  }
}

async function loadDashboard() {
  try {
    const data = await api("GET", "/api/dashboard");
    renderRunning(data.running);
    renderBackups(data);
    renderDestinations(data.destinations);
  } catch (error) {
    setText("live-status", error.message, true);
  }
}

function startDashboard() {
  let pending = null;
  const reload = () => { clearTimeout(pending); pending = setTimeout(loadDashboard, 300); };
  loadDashboard();
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => setText("live-status", "live"));
  source.addEventListener("error", () => setText("live-status", "reconnecting…", true));
  source.addEventListener("progress", (message) => {
    const event = JSON.parse(message.data);
    // Actions the console itself runs to draw this page are not news.
    let row = progressRows.get(event.task);
    const done = ["completed", "aborted", "validation-failed"].includes(event.status);
    if (!row && !done) { reload(); return; }
    if (row) row.replaceChild(progressCell(event.progress, event.status), row.lastChild);
    if (done && row) reload();
  });
  source.addEventListener("cluster-event", reload);
}

// --- snapshot browser ------------------------------------------------------------------
const browser = { repository: null, snapshot: "", dir: "", chosen: new Set() };

function repositoryKey(row) { return `${row.repository_id} ${row.path}`; }

async function loadRepositories() {
  const select = document.getElementById("repository");
  const wanted = new URLSearchParams(location.search);
  setText("browse-status", "reading the destinations…");
  const rows = (await action("cluster/read-backup-repositories")).output;
  select.replaceChildren(el("option", { value: "" }, "– pick a module's repository –"));
  browser.rows = new Map();
  for (const row of rows) {
    const label = `${row.installed_instance || row.module_id || row.name} · ${row.path} · ${row.repository_name || row.repository_id}`;
    browser.rows.set(repositoryKey(row), row);
    const option = el("option", { value: repositoryKey(row) }, label);
    if (row.repository_id === wanted.get("repository") && row.path === wanted.get("path")) option.selected = true;
    select.append(option);
  }
  setText("browse-status", rows.length ? "" : "No repository found on any destination.");
  if (select.value) await pickRepository();
}

async function pickRepository() {
  const row = browser.rows.get(document.getElementById("repository").value);
  browser.repository = row || null;
  const snapshots = document.getElementById("snapshot");
  snapshots.replaceChildren();
  snapshots.disabled = true;
  document.querySelector("#tree tbody").replaceChildren();
  const target = document.getElementById("restore-module");
  target.replaceChildren();
  if (!row) return;
  if (row.installed_instance) target.append(el("option", { value: row.installed_instance }, row.installed_instance));
  setText("browse-status", "reading the snapshots…");
  const listed = (await action("cluster/read-backup-snapshots", { repository: row.repository_id, path: row.path })).output;
  listed.sort((a, b) => b.timestamp - a.timestamp);
  for (const snapshot of listed) {
    snapshots.append(el("option", { value: snapshot.id }, `${when(snapshot.timestamp)} · ${snapshot.id.slice(0, 8)} · ${bytes(snapshot.total_bytes)}`));
  }
  snapshots.disabled = false;
  setText("browse-status", listed.length ? "" : "This repository holds no snapshot.");
  if (listed.length) await pickSnapshot();
}

async function pickSnapshot() {
  browser.snapshot = document.getElementById("snapshot").value;
  browser.chosen.clear();
  updateChosen();
  await openDir("");
}

function query(extra) {
  const row = browser.repository;
  return new URLSearchParams({ repository: row.repository_id, path: row.path, snapshot: browser.snapshot, ...extra });
}

function renderBreadcrumbs() {
  const nav = document.getElementById("breadcrumbs");
  nav.replaceChildren();
  const parts = browser.dir ? browser.dir.split("/") : [];
  const link = (label, dir) => {
    const anchor = el("a", { href: "#", "data-dir": dir }, label);
    anchor.addEventListener("click", (event) => { event.preventDefault(); openDir(dir); });
    return anchor;
  };
  nav.append(link("snapshot", ""));
  parts.forEach((part, index) => nav.append(" / ", link(part, parts.slice(0, index + 1).join("/"))));
}

async function openDir(dir) {
  setText("browse-status", "listing…");
  let listing;
  try {
    listing = await api("GET", `/api/snapshots/ls?${query({ dir })}`);
  } catch (error) {
    setText("browse-status", error.message, true);
    return;
  }
  browser.dir = listing.dir;
  renderBreadcrumbs();
  const body = document.querySelector("#tree tbody");
  body.replaceChildren();
  for (const entry of listing.entries) {
    const box = el("input", { type: "checkbox", checked: browser.chosen.has(entry.path) });
    box.addEventListener("change", () => {
      if (box.checked) browser.chosen.add(entry.path); else browser.chosen.delete(entry.path);
      updateChosen();
    });
    let name = entry.name;
    if (entry.type === "dir") {
      name = el("a", { href: "#", class: "dir" }, `${entry.name}/`);
      name.addEventListener("click", (event) => { event.preventDefault(); openDir(entry.path); });
    }
    const downloads = el("td", {});
    const formats = entry.type === "dir" ? ["zip", "tar"] : entry.type === "file" ? ["raw"] : [];
    for (const format of formats) {
      const href = `/api/snapshots/download?${query({ item: entry.path, format })}`;
      downloads.append(el("a", { href, class: `download download-${format}`, download: "" }, format === "raw" ? "file" : format), " ");
    }
    body.append(el("tr", { "data-path": entry.path, "data-type": entry.type },
      el("td", {}, box), el("td", { class: "name" }, name),
      el("td", {}, entry.type === "file" ? bytes(entry.size) : ""),
      el("td", {}, entry.mtime ? new Date(entry.mtime).toLocaleString() : ""), downloads));
  }
  setText("browse-status", listing.cut ? "Only the first entries are shown." : listing.entries.length ? "" : "This folder is empty.");
}

function updateChosen() {
  const chosen = [...browser.chosen];
  setText("chosen", chosen.length ? chosen.join(", ") : "none");
  const module = document.getElementById("restore-module").value;
  document.getElementById("restore").disabled = !(chosen.length && module);
}

async function restoreChosen() {
  const module = document.getElementById("restore-module").value;
  const paths = [...browser.chosen];
  const question = `Restore ${paths.length} path(s) from snapshot ${browser.snapshot.slice(0, 8)} into ${module}?\n` +
    `The files there now are overwritten:\n${paths.join("\n")}`;
  if (!window.confirm(question)) return;
  const button = document.getElementById("restore");
  button.disabled = true;
  setText("restore-status", "restoring…");
  try {
    const row = browser.repository;
    const result = await action("cluster/restore-module", {
      repository: row.repository_id, path: row.path, snapshot: browser.snapshot, module_id: module, paths,
    });
    const output = result.output || {};
    setText("restore-status", `Restored into ${output.module_id || module}: ${output.files_restored ?? "?"} file(s).`);
  } catch (error) {
    setText("restore-status", error.message, true);
  } finally {
    button.disabled = false;
  }
}

function startBrowser() {
  document.getElementById("repository").addEventListener("change", () => pickRepository().catch((e) => setText("browse-status", e.message, true)));
  document.getElementById("snapshot").addEventListener("change", () => pickSnapshot());
  document.getElementById("restore").addEventListener("click", restoreChosen);
  loadRepositories().catch((error) => setText("browse-status", error.message, true));
}

document.addEventListener("DOMContentLoaded", () => {
  wireLogout();
  formatStatic();
  const page = document.body.dataset.page;
  if (page === "dashboard") startDashboard();
  if (page === "browse") startBrowser();
});
