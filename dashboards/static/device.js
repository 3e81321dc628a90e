// A device's page: one line chart per metric, its status and reporting history, refreshed from
// GET /devices/{id}/telemetry every 30 s while the window ends now.
(function () {
  const initial = ftCharts.data("telemetry-data");
  const span = ftCharts.data("telemetry-window") || {};
  if (!initial) return;

  function draw(t) {
    const container = document.getElementById("metric-charts");
    const present = new Set();
    t.metrics.forEach((m) => {
      let el = Array.from(container.children).find((c) => c.dataset.metric === m.name);
      if (!el) {
        el = document.createElement("div");
        el.className = "chart";
        el.setAttribute("role", "img");
        el.setAttribute("aria-label", `${m.name} over time`);
        el.dataset.metric = m.name;
        container.appendChild(el);
      }
      present.add(el);
      ftCharts.lines(el, m.unit ? `${m.name} (${m.unit})` : m.name,
        [{ name: m.name, x: m.points.map((p) => p.t), y: m.points.map((p) => p.avg) }], m.unit || "");
    });
    document.getElementById("metrics-empty").hidden = t.metrics.length > 0;
    ftOps.chartOr("reporting-chart", t.reporting.length > 0, (el) => ftCharts.bars(el, "Messages per hour", [
      { name: "received", x: t.reporting.map((h) => h.hour), y: t.reporting.map((h) => h.messages) },
      { name: "missing", x: t.reporting.map((h) => h.hour), y: t.reporting.map((h) => h.missing) },
    ]));
  }

  function update(t) {
    ftOps.fill(document, t, {
      "device.online_since": ftOps.utc, "device.last_seen": ftOps.utc,
    });
    const d = t.device;
    const state = d.status !== "active" ? "revoked" : d.online ? "online" : (d.online === null && !d.last_seen ? "never seen" : "offline");
    document.getElementById("device-status").textContent = state;
    const messages = t.reporting.reduce((n, h) => n + h.messages, 0);
    const missing = t.reporting.reduce((n, h) => n + h.missing, 0);
    document.getElementById("messages-total").textContent = String(messages);
    document.getElementById("missing-total").textContent = String(Math.max(missing, 0));
    document.getElementById("bucket").textContent = ftOps.duration(t.bucket_seconds);
    const table = document.getElementById("status-history");
    table.tBodies[0].replaceChildren(...t.status_history.map((s) => {
      const tr = document.createElement("tr");
      [ftOps.utc(s.at), s.online ? "online" : "offline", s.firmware || "—", ftOps.utc(s.received_at)].forEach((text) => {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      return tr;
    }));
    table.hidden = t.status_history.length === 0;
    document.getElementById("status-empty").hidden = t.status_history.length > 0;
    draw(t);
  }

  draw(initial);
  if (!span.custom) {
    const id = initial.device.id;
    ftOps.poll(() => {
      const until = new Date();
      const since = new Date(until.getTime() - span.days * 86400000);
      return `/devices/${id}/telemetry?` + new URLSearchParams({ since: since.toISOString(), until: until.toISOString() });
    }, 30, (t) => { update(t); });
  }
})();
