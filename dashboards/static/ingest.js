// The ingest page: rate, lag, ingest counters, quarantine and completeness, refreshed from
// GET /ingest/health every 5 s with the page's own ranges.
(function () {
  const initial = ftCharts.data("ingest-data");
  if (!initial) return;
  const query = new URLSearchParams(window.location.search);
  const params = new URLSearchParams();
  ["minutes", "hours"].forEach((k) => { if (query.get(k)) params.set(k, query.get(k)); });
  const two = (v) => ftOps.fixed(v, 2);
  const whole = (v) => (v === null || v === undefined ? "—" : String(Math.round(v)));
  // A histogram quantile, as the `estimate` template filter writes it.
  const estimate = (v, over) => (v !== null && v !== undefined ? two(v)
    : over !== null && over !== undefined ? `over ${over}` : "not measured");

  function draw(h) {
    const r = h.recent;
    ftOps.chartOr("rate-chart", r.messages > 0, (el) => ftCharts.bars(el, "Messages per minute", [
      { name: "messages", x: r.per_minute.map((m) => m.minute), y: r.per_minute.map((m) => m.messages) },
    ]));
    const q = h.quarantine.reasons;
    ftOps.chartOr("quarantine-chart", q.length > 0, (el) => ftCharts.bars(el, "Quarantined messages by reason", [
      { name: "messages", x: q.map((s) => s.reason), y: q.map((s) => s.count) },
    ]));
    const c = h.completeness.filter((p) => p.completeness !== null);
    ftOps.chartOr("completeness-chart", c.length > 0, (el) => ftCharts.bars(el, "Data completeness", [
      { name: "completeness", x: c.map((p) => `${p.customer_name} / ${p.project_name}`), y: c.map((p) => p.completeness) },
    ], { percent: true }));
  }

  function update(h) {
    const m = h.ingest_metrics;
    ftOps.fill(document, h, {
      "recent.per_second": ftOps.rate, "recent.lag_p50_seconds": two, "recent.lag_p95_seconds": two,
      "recent.lag_max_seconds": two, "ingest_metrics.messages": whole,
      "ingest_metrics.duplicates.usage": (v) => whole(v || 0), "ingest_metrics.duplicates.metric": (v) => whole(v || 0),
      "ingest_metrics.db_failures": whole, "ingest_metrics.queue_depth": whole,
      "recent.late_lag_max_seconds": ftOps.duration, "replica.lag_seconds": two,
      "replica.lag_bytes": whole,
    });
    const replica = document.getElementById("replica");
    if (replica) {
      document.getElementById("replica-down").hidden = h.replica.reachable;
      document.getElementById("replica-error").textContent = h.replica.error || "";
      document.getElementById("replica-lag").hidden = !h.replica.reachable;
    }
    [["commit-lag", "commit_lag"], ["ingest-delay", "ingest_delay"]].forEach(([id, key]) => {
      ["p50", "p95"].forEach((p) => {
        document.getElementById(`${id}-${p}`).textContent =
          estimate(m[`${key}_${p}_seconds`], m[`${key}_${p}_over_seconds`]);
      });
    });
    document.getElementById("late-notice").hidden = !h.recent.late_messages;
    document.getElementById("late-max").hidden = !h.recent.late_messages;
    document.getElementById("duplicates").textContent = m.reachable
      ? whole(Object.values(m.duplicates).reduce((a, b) => a + b, 0)) : "—";
    document.getElementById("metrics-down").hidden = m.reachable;
    document.getElementById("metrics-error").textContent = m.error || "";
    document.getElementById("ingest-metrics").hidden = !m.reachable;

    const reasons = document.getElementById("quarantine-reasons");
    ftOps.rows(reasons.tBodies[0], h.quarantine.reasons, (s) => [
      { text: s.reason }, { text: String(s.count), num: true }, { text: ftOps.utc(s.last_received_at) },
      { text: s.sample.payload_preview.length > 160 ? `${s.sample.payload_preview.slice(0, 159)}…` : s.sample.payload_preview, code: true },
    ]);
    Array.from(reasons.tBodies[0].rows).forEach((tr, i) => {
      const s = h.quarantine.reasons[i];
      tr.dataset.reason = s.reason;
      const cell = tr.cells[3];
      const about = document.createElement("div");
      about.className = "explain";
      about.textContent = `${s.sample.device_serial || "no device"} · ${s.sample.topic} · ${s.sample.payload_size} bytes` + (s.sample.detail ? ` · ${s.sample.detail}` : "");
      const link = document.createElement("a");
      link.href = `/quarantine/${s.sample.id}/payload`;
      link.textContent = "raw payload";
      cell.firstChild.classList.add("payload");
      cell.prepend(about);
      cell.append(" ", link);
    });
    reasons.hidden = h.quarantine.reasons.length === 0;

    const table = document.getElementById("completeness-table");
    if (table) {
      ftOps.rows(table.tBodies[0], h.completeness, (p) => [
        { text: `${p.customer_name} / ${p.project_name}`, href: `/dashboards/fleet?project=${p.project_id}` },
        { text: String(p.devices_reporting), num: true }, { text: String(p.received), num: true },
        { text: String(p.missing), num: true },
        { text: p.completeness === null ? "no data" : `${(100 * p.completeness).toFixed(1)}%`, num: true, value: p.completeness === null ? -1 : p.completeness },
      ], "project");
    }
    draw(h);
  }

  draw(initial);
  ftOps.poll(() => `/ingest/health?${params}`, 5, update);
})();
