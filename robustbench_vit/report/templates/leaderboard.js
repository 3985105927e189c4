// Sorting (click a column header; numbers numerically, blanks last) and filtering (model, defense:
// rows; scenario: columns) of the leaderboard table. No libraries, no network.
(function () {
  "use strict";
  var table = document.getElementById("leaderboard-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.querySelectorAll("thead tr.columns th"));
  var groups = Array.prototype.slice.call(table.querySelectorAll("thead tr.groups th.group"));
  var inputs = {
    model: document.getElementById("filter-model"),
    defense: document.getElementById("filter-defense"),
    scenario: document.getElementById("filter-scenario")
  };
  var count = document.getElementById("row-count");
  var state = { col: -1, dir: "" };

  function rows() { return Array.prototype.slice.call(body.rows); }

  function compare(col, numeric, sign) {
    return function (a, b) {
      var x = a.cells[col].getAttribute("data-value") || "";
      var y = b.cells[col].getAttribute("data-value") || "";
      if (x === "" || y === "") { return (x === "") - (y === ""); }  // blanks last, either way
      if (numeric) { return sign * (parseFloat(x) - parseFloat(y)); }
      return sign * x.localeCompare(y);
    };
  }

  function sortBy(th) {
    var col = Number(th.getAttribute("data-col"));
    var numeric = th.classList.contains("num");
    var dir;
    if (state.col === col) {
      dir = state.dir === "ascending" ? "descending" : "ascending";
    } else if (numeric) {  // first click: best first
      dir = th.getAttribute("data-better") === "lower" ? "ascending" : "descending";
    } else {
      dir = "ascending";
    }
    rows().sort(compare(col, numeric, dir === "ascending" ? 1 : -1))
      .forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    state = { col: col, dir: dir };
  }

  function text(input) { return input ? input.value.trim().toLowerCase() : ""; }

  function filter() {
    var model = text(inputs.model), defense = text(inputs.defense), scenario = text(inputs.scenario);
    var shown = 0;
    rows().forEach(function (row) {
      var keep = row.getAttribute("data-model").toLowerCase().indexOf(model) >= 0 &&
        row.getAttribute("data-defense").toLowerCase().indexOf(defense) >= 0;
      row.hidden = !keep;
      shown += keep ? 1 : 0;
    });
    var visible = {};
    headers.forEach(function (th) {
      var label = th.getAttribute("data-label");
      if (label === null) { return; }
      var keep = label.toLowerCase().indexOf(scenario) >= 0;
      var col = Number(th.getAttribute("data-col"));
      th.hidden = !keep;
      rows().forEach(function (row) { row.cells[col].hidden = !keep; });
      var group = th.getAttribute("data-group");
      visible[group] = (visible[group] || 0) + (keep ? 1 : 0);
    });
    groups.forEach(function (th) {
      var n = visible[th.getAttribute("data-group")] || 0;
      th.hidden = n === 0;
      th.colSpan = Math.max(n, 1);
    });
    if (count) { count.textContent = shown + " of " + body.rows.length + " rows"; }
  }

  headers.forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(th); }
    });
  });
  Object.keys(inputs).forEach(function (key) {
    if (inputs[key]) { inputs[key].addEventListener("input", filter); }
  });
  filter();
}());
