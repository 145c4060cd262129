"use strict";
// Draws the report's figures from the JSON block #report-data; no inline handlers, no network.
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const config = { displaylogo: false, responsive: true, showLink: false, showSendToCloud: false };
  const margin = { l: 50, r: 10, t: 10, b: 40 };
  const fmt = (v) => (v === null || v === undefined ? "n/a" : Number(v).toPrecision(3));
  const at = (grid, i, j) => (grid ? grid[i][j] : null);

  function cellData(rows, cols, fn) {
    return rows.map((_, i) => cols.map((_, j) => fn(i, j)));
  }

  function bounds(...grids) {
    let lo = Infinity, hi = -Infinity;
    for (const g of grids) for (const row of g) for (const v of row) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    return lo <= hi ? [lo, hi] : [0, 1];
  }

  function heatmap(div, x, y, z, custom, hover, opts) {
    const trace = { type: "heatmap", x: x, y: y, z: z, customdata: custom, hovertemplate: hover + "<extra></extra>",
                    colorscale: opts.colorscale, zmin: opts.zmin, zmax: opts.zmax, zmid: opts.zmid, hoverongaps: false };
    const layout = { margin: margin, xaxis: { title: { text: opts.xtitle } }, yaxis: { title: { text: opts.ytitle } },
                     plot_bgcolor: "#e5e5e5" };
    Plotly.react(div, [trace], layout, config);
  }

  // ---- layer × position heatmaps
  const statSelect = document.getElementById("stat-select");
  const sigToggle = document.getElementById("sig-toggle");

  function drawHeatmaps() {
    if (!data.heatmaps) return;
    const stat = statSelect.value;
    const onlySig = sigToggle ? sigToggle.checked : false;
    for (const div of document.querySelectorAll(".heatmap[data-model]")) {
      const m = (data.heatmaps.maps[stat] || {})[div.dataset.model];
      if (!m) { Plotly.purge(div); div.textContent = "no data for this statistic"; continue; }
      const x = m.positions, y = m.layers, panel = div.dataset.panel;
      const pos = m.width > 1 ? "positions %{x}–%{customdata[0]}" : "position %{x}";
      const end = (j) => m.positions[j] + m.width - 1;
      if (panel === "a" || panel === "b") {
        const [lo, hi] = bounds(m.a, m.b);
        const n = panel === "a" ? m.na : m.nb;
        heatmap(div, x, y, m[panel], cellData(y, x, (i, j) => [end(j), n[i][j]]),
                "layer %{y}<br>" + pos + "<br>value %{z:.4g}<br>count %{customdata[1]}" + (m.width > 1 ? " (largest in bin)" : ""),
                { colorscale: "Viridis", zmin: lo, zmax: hi, xtitle: "Token position", ytitle: "Layer" });
      } else {
        const z = onlySig && m.sig ? m.diff.map((row, i) => row.map((v, j) => (m.sig[i][j] ? v : null))) : m.diff;
        const [lo, hi] = bounds(m.diff);
        const r = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
        let extra, custom;
        if (m.width === 1) {
          custom = cellData(y, x, (i, j) => [end(j), m.na[i][j], m.nb[i][j], fmt(at(m.g, i, j)), fmt(at(m.q, i, j)),
                                             fmt(at(m.ci_low, i, j)), fmt(at(m.ci_high, i, j))]);
          extra = m.q ? "<br>Hedges g %{customdata[3]}<br>q %{customdata[4]}<br>95% CI [%{customdata[5]}, %{customdata[6]}]" : "";
        } else {
          custom = cellData(y, x, (i, j) => [end(j), m.na[i][j], m.nb[i][j], fmt(at(m.q_min, i, j))]);
          extra = m.q_min ? "<br>smallest q in bin %{customdata[3]}" : "";
        }
        heatmap(div, x, y, z, custom, "layer %{y}<br>" + pos + "<br>difference %{z:.4g}<br>count A %{customdata[1]}, B %{customdata[2]}" + extra,
                { colorscale: "RdBu", zmin: -r, zmax: r, zmid: 0, xtitle: "Token position", ytitle: "Layer" });
      }
    }
  }

  // ---- profiles with confidence bands
  function band(x, lo, hi, mid, name, sig) {
    const traces = [
      { x: x, y: hi, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false },
      { x: x, y: lo, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(31,119,180,0.2)", name: "95% CI", hoverinfo: "skip" },
      { x: x, y: mid, mode: "lines+markers", line: { color: "#1f77b4" }, name: name,
        marker: { size: sig ? 7 : 3, symbol: sig ? sig.map((s) => (s ? "circle" : "circle-open")) : "circle" },
        hovertemplate: "%{x}: %{y:.4g}<extra></extra>" },
    ];
    return traces;
  }

  function drawProfiles() {
    if (!data.compare) return;
    const stat = statSelect ? statSelect.value : Object.keys(data.compare.profiles)[0];
    for (const div of document.querySelectorAll(".profile")) {
      const p = ((data.compare.profiles[stat] || {})[div.dataset.model] || {})[div.dataset.axis];
      if (!p || !p.x.length) { Plotly.purge(div); div.textContent = "no profile for this statistic"; continue; }
      const layout = { margin: margin, xaxis: { title: { text: div.dataset.axis === "layer" ? "Layer" : "Token position" } },
                       yaxis: { title: { text: "difference B − A" }, zeroline: true }, showlegend: false };
      Plotly.react(div, band(p.x, p.ci_low, p.ci_high, p.diff, "difference", p.sig), layout, config);
    }
  }

  // ---- attention maps
  function drawAttention() {
    if (!data.attention) return;
    for (const div of document.querySelectorAll(".attention")) {
      const m = data.attention.maps[Number(div.dataset.index)], panel = div.dataset.panel;
      const x = m.positions, y = m.positions;
      const end = (j) => m.positions[j] + m.width - 1;
      const where = m.width > 1 ? "query %{y}<br>keys %{x}–%{customdata[0]}" : "query %{y}<br>key %{x}";
      if (panel === "diff") {
        const [lo, hi] = bounds(m.diff);
        const r = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
        heatmap(div, x, y, m.diff, cellData(y, x, (i, j) => [end(j), m.na[i][j], m.nb[i][j]]),
                where + "<br>difference of log10 %{z:.3g}<br>count A %{customdata[1]}, B %{customdata[2]}",
                { colorscale: "RdBu", zmin: -r, zmax: r, zmid: 0, xtitle: "Key token", ytitle: "Query token" });
      } else {
        const [lo, hi] = bounds(m.a, m.b);
        const n = panel === "a" ? m.na : m.nb;
        heatmap(div, x, y, m[panel], cellData(y, x, (i, j) => [end(j), n[i][j]]),
                where + "<br>log10 probability %{z:.3g}<br>count %{customdata[1]}",
                { colorscale: "Viridis", zmin: lo, zmax: hi, xtitle: "Key token", ytitle: "Query token" });
      }
      Plotly.relayout(div, { "yaxis.autorange": "reversed" });
    }
  }

  // ---- detectors: F1 by layer
  function drawDetect() {
    if (!data.detect) return;
    for (const div of document.querySelectorAll(".detect-curve")) {
      const m = data.detect.models[Number(div.dataset.index)];
      const traces = m.curves.map((c) => ({
        x: c.x, y: c.f1, mode: "lines+markers", name: c.name, error_y: { type: "data", array: c.std, visible: true, thickness: 1 },
        customdata: c.auroc, hovertemplate: "layer %{x}<br>F1 %{y:.3f}<br>AUROC %{customdata:.3f}<extra></extra>" }));
      const shapes = m.length_f1 === null ? [] : [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: m.length_f1, y1: m.length_f1,
                                                    line: { dash: "dash", color: "#666" } }];
      Plotly.react(div, traces, { margin: margin, shapes: shapes, xaxis: { title: { text: "Layer" } },
                                  yaxis: { title: { text: "CV F1 (best classifier)" }, range: [0, 1.02] } }, config);
    }
  }

  // ---- guard: rates with confidence intervals
  function drawGuard() {
    if (!data.guard) return;
    for (const div of document.querySelectorAll(".guard-chart")) {
      const c = data.guard[Number(div.dataset.index)];
      const plus = c.rate.map((r, i) => (r === null || c.high[i] === null ? 0 : c.high[i] - r));
      const minus = c.rate.map((r, i) => (r === null || c.low[i] === null ? 0 : r - c.low[i]));
      // labels are user text: escaped for plotly's own markup, shown as category ticks
      const labels = c.labels.map((l, i) => `${i + 1}. ` + l.replace(/&/g, "&amp;").replace(/</g, "&lt;"));
      Plotly.react(div, [{ type: "bar", x: labels, y: c.rate, error_y: { type: "data", array: plus, arrayminus: minus, visible: true },
                           hovertemplate: "%{x}<br>rate %{y:.3f}<extra></extra>" }],
                   { margin: margin, xaxis: { type: "category", automargin: true }, yaxis: { range: [0, 1.05], title: { text: "rate (95% CI)" } } },
                   config);
    }
  }

  if (statSelect) statSelect.addEventListener("change", () => { drawHeatmaps(); drawProfiles(); });
  if (sigToggle) sigToggle.addEventListener("change", drawHeatmaps);
  drawHeatmaps();
  drawProfiles();
  drawAttention();
  drawDetect();
  drawGuard();
  document.body.dataset.rendered = "true";
})();
