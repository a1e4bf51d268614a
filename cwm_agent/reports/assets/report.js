// cwm-agent report: sorting and filtering the tables, searching the turns of a trajectory.
// Plain JavaScript, no library; reads only the page it is on.
"use strict";

function sortTable(table, th) {
  const index = Array.from(th.parentNode.children).indexOf(th);
  const numeric = th.dataset.type === "num";
  const asc = !th.classList.contains("sorted-asc");
  table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
  th.classList.add(asc ? "sorted-asc" : "sorted-desc");
  const body = table.tBodies[0];
  const key = (row) => {
    const cell = row.children[index];
    const raw = cell ? (cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim()) : "";
    return numeric ? parseFloat(raw) || 0 : raw.toLowerCase();
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const ka = key(a), kb = key(b);
    const cmp = numeric ? ka - kb : ka < kb ? -1 : ka > kb ? 1 : 0;
    return asc ? cmp : -cmp;
  });
  rows.forEach((row) => body.appendChild(row));
}

function filterItems() {
  const table = document.getElementById("items");
  if (!table) return;
  const selects = Array.from(document.querySelectorAll("select[data-filter]"));
  const text = (document.getElementById("f-text").value || "").trim().toLowerCase();
  let shown = 0;
  Array.from(table.tBodies[0].rows).forEach((row) => {
    let ok = selects.every((s) => !s.value || row.dataset[s.dataset.filter] === s.value);
    if (ok && text) ok = row.textContent.toLowerCase().includes(text);
    row.hidden = !ok;
    if (ok) shown += 1;
  });
  document.getElementById("shown-count").textContent = shown + " of " + table.tBodies[0].rows.length + " shown";
}

function searchTurns() {
  const query = (document.getElementById("turn-search").value || "").trim().toLowerCase();
  const turns = Array.from(document.querySelectorAll("details.turn"));
  let hits = 0;
  turns.forEach((turn) => {
    turn.classList.remove("search-hit", "search-miss");
    if (!query) return;
    if (turn.textContent.toLowerCase().includes(query)) {
      hits += 1;
      turn.classList.add("search-hit");
      turn.open = true;
      turn.querySelectorAll("details").forEach((d) => {
        if (d.textContent.toLowerCase().includes(query)) d.open = true;
      });
    } else {
      turn.classList.add("search-miss");
    }
  });
  document.getElementById("search-count").textContent = query ? hits + " of " + turns.length + " turns match" : "";
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th").forEach((th) => th.addEventListener("click", () => sortTable(table, th)));
  });
  if (document.getElementById("items")) {
    document.querySelectorAll("select[data-filter]").forEach((s) => s.addEventListener("change", filterItems));
    document.getElementById("f-text").addEventListener("input", filterItems);
    filterItems();
  }
  const search = document.getElementById("turn-search");
  if (search) {
    search.addEventListener("input", searchTurns);
    const all = (open) => document.querySelectorAll("details.turn").forEach((d) => { d.open = open; });
    document.getElementById("expand-all").addEventListener("click", () => all(true));
    document.getElementById("collapse-all").addEventListener("click", () => all(false));
    // A link to #turn-N opens that turn.
    const target = location.hash && document.querySelector(location.hash);
    if (target && target.tagName === "DETAILS") target.open = true;
  }
});
