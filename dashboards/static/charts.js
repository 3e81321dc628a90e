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

  // points: [{label, x: user value, y: business value, recommendation}], cut: thresholds
  function quadrant(el, title, points, xLine, yLine) {
    const colours = { iterate_invest: "#17652c", keep_prudently: "#1f4f9c", cut_candidate: "#a02a17", insufficient_data: "#888" };
    const groups = {};
    points.forEach((p) => { (groups[p.recommendation] = groups[p.recommendation] || []).push(p); });
    const traces = Object.keys(groups).map((rec) => ({
      type: "scatter", mode: "markers+text", name: rec.replace("_", " "),
      x: groups[rec].map((p) => p.x), y: groups[rec].map((p) => p.y),
      text: groups[rec].map((p) => p.label), textposition: "top center",
      marker: { size: 12, color: colours[rec] || "#555" },
    }));
    const region = (x, y, text) => ({ x, y, xref: "x", yref: "y", text, showarrow: false, font: { color: "#8795a1", size: 13 } });
    return draw(el, traces, {
      title: { text: title },
      margin: { l: 50, r: 20, t: 60, b: 90 },
      xaxis: { title: { text: "user value (measured)", standoff: 28 }, range: [-0.05, 1.08], zeroline: false },
      yaxis: { title: { text: "business value (delivery)" }, range: [-0.2, 1.2], zeroline: false, tickvals: [0, 0.25, 0.5, 0.75, 1] },
      shapes: [
        { type: "line", x0: xLine, x1: xLine, y0: 0, y1: 1, line: { dash: "dot", color: "#aab4bf" } },
        { type: "line", x0: 0, x1: 1, y0: yLine, y1: yLine, line: { dash: "dot", color: "#aab4bf" } },
      ],
      // region names sit just outside the plotted square, clear of the points
      annotations: [
        region((1 + xLine) / 2, 1.1, "iterate / invest"),
        region((1 + xLine) / 2, -0.13, "keep prudently"),
        region(xLine / 2, 1.1, "cut candidate (business value only)"),
        region(xLine / 2, -0.13, "cut candidate"),
      ],
    });
  }

  window.ftCharts = { data, draw, lines, bars, histogram, quadrant };
})();
