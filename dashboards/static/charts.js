// Chart helpers over Plotly (served from the plotly package: no CDN). Every chart reads its
// data from a <script type="application/json"> block or a JSON API, never from markup.
(function () {
  const CONFIG = { displayModeBar: false, responsive: true };
  const LAYOUT = {
    margin: { l: 50, r: 20, t: 36, b: 40 }, font: { family: "system-ui, sans-serif", size: 12 },
    paper_bgcolor: "#fff", plot_bgcolor: "#fff", legend: { orientation: "h", y: -0.2 },
  };

  function data(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function draw(el, traces, layout) {
    const target = typeof el === "string" ? document.getElementById(el) : el;
    if (!target) return null;
    // Charts say how many points they hold, so tests and people can tell empty from broken.
    target.dataset.points = String(traces.reduce((n, t) => n + (t.x ? t.x.length : 0), 0));
    Plotly.react(target, traces, Object.assign({}, LAYOUT, layout || {}), CONFIG);
    return target;
  }

  // series: [{name, x: [...], y: [...]}]
  function lines(el, title, series, yTitle) {
    return draw(el, series.map((s) => ({ type: "scatter", mode: "lines+markers", name: s.name, x: s.x, y: s.y })),
      { title: { text: title }, yaxis: { title: { text: yTitle || "" }, rangemode: "tozero" } });
  }

  // bars: [{name, x: [...], y: [...]}] (grouped)
  function bars(el, title, series, opts) {
    const o = opts || {};
    return draw(el, series.map((s) => ({ type: "bar", name: s.name, x: s.x, y: s.y, orientation: o.horizontal ? "h" : "v" })),
      { title: { text: title }, barmode: o.stacked ? "stack" : "group", yaxis: { tickformat: o.percent ? ".0%" : "" } });
  }

  function histogram(el, title, values, xTitle) {
    return draw(el, [{ type: "histogram", x: values, marker: { color: "#1f6feb" } }],
      { title: { text: title }, xaxis: { title: { text: xTitle || "" } }, yaxis: { title: { text: "devices" } } });
  }

  // Verdict colours, shared by the quadrant and the legend of the table.
  const VERDICT_COLOURS = { iterate_invest: "#17652c", keep_prudently: "#1f4f9c", cut_candidate: "#a02a17", insufficient_data: "#888", too_early: "#b08900" };

  // points: [{label, x: adoption, low, high (its 95 % interval), y: business value,
  // recommendation}]; cut: the cut line (adoption); business: the high business value line;
  // labels: each verdict's label from the rule table the server decides by.
  function quadrant(el, title, points, cut, business, labels) {
    const groups = {};
    points.forEach((p) => { (groups[p.recommendation] = groups[p.recommendation] || []).push(p); });
    const traces = Object.keys(groups).map((rec) => ({
      type: "scatter", mode: "markers+text", name: labels[rec] || rec.replace("_", " "),
      x: groups[rec].map((p) => p.x), y: groups[rec].map((p) => p.y),
      error_x: { type: "data", symmetric: false, thickness: 1.5, width: 3,
                 array: groups[rec].map((p) => p.high - p.x), arrayminus: groups[rec].map((p) => p.x - p.low) },
      text: groups[rec].map((p) => p.label), textposition: "top center",
      marker: { size: 11, color: VERDICT_COLOURS[rec] || "#555" },
    }));
    const region = (x, y, text, xanchor) => ({ x, y, xref: "x", yref: "y", text, xanchor, showarrow: false, font: { color: "#8795a1", size: 12 } });
    return draw(el, traces, {
      title: { text: title },
      margin: { l: 50, r: 20, t: 70, b: 100 },
      xaxis: { title: { text: "adoption, with its 95 % interval (measured)", standoff: 12 }, range: [-0.03, 1.05], zeroline: false, tickformat: ".0%" },
      yaxis: { title: { text: "business value (delivery)" }, range: [-0.08, 1.2], zeroline: false, tickvals: [0, 0.25, 0.5, 0.75, 1] },
      legend: { orientation: "h", y: -0.32 },
      shapes: [
        { type: "line", x0: cut, x1: cut, y0: -0.05, y1: 1.15, line: { dash: "dot", color: "#a02a17" } },
        { type: "line", x0: cut, x1: 1.05, y0: business, y1: business, line: { dash: "dot", color: "#aab4bf" } },
      ],
      // the rule table's regions: right of the cut line the business value decides; a cut
      // needs the whole interval left of the line
      annotations: [
        region(1.04, 1.15, labels.iterate_invest || "iterate / invest", "right"),
        region(1.04, business - 0.07, labels.keep_prudently || "keep prudently", "right"),
        region(cut + 0.01, 1.15, "← " + (labels.cut_candidate || "cut candidate") + ": whole interval left of the line", "left"),
      ],
    });
  }

  // series: [{name, x: [...], y: [...], low: [...], high: [...]}]: shares with intervals
  function intervals(el, title, series, yTitle) {
    return draw(el, series.map((s) => ({
      type: "scatter", mode: "lines+markers", name: s.name, x: s.x, y: s.y,
      error_y: { type: "data", symmetric: false, thickness: 1, width: 2,
                 array: s.high.map((h, i) => h - s.y[i]), arrayminus: s.low.map((l, i) => s.y[i] - l) },
    })), { title: { text: title }, yaxis: { title: { text: yTitle || "" }, range: [0, 1.02], tickformat: ".0%" } });
  }

  window.ftCharts = { data, draw, lines, bars, histogram, quadrant, intervals };
})();
