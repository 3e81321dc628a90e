// The fleet page: status per project, firmware, battery and signal charts, refreshed from
// GET /fleet every 10 s with the page's own filter.
(function () {
  const initial = ftCharts.data("fleet-data");
  if (!initial || !document.getElementById("totals")) return;
  const query = new URLSearchParams(window.location.search);
  const params = new URLSearchParams();
  ["project", "stale_minutes"].forEach((k) => { if (query.get(k)) params.set(k, query.get(k)); });

  function draw(fleet) {
    const names = fleet.projects.map((p) => `${p.customer_name} / ${p.project_name}`);
    ftOps.chartOr("status-chart", fleet.totals.devices > 0, (el) => ftCharts.bars(el, "Devices per project", [
      { name: "online", x: names, y: fleet.projects.map((p) => p.online) },
      { name: "offline", x: names, y: fleet.projects.map((p) => p.offline) },
      { name: "never seen", x: names, y: fleet.projects.map((p) => p.never_seen) },
    ], { stacked: true }));
    // versions like "2.0" are names, not numbers: a category axis keeps "1.5.0" beside "2.0"
    ftOps.chartOr("firmware-chart", fleet.firmware.length > 0, (el) => ftCharts.draw(el, [
      { type: "bar", name: "devices", x: fleet.firmware.map((f) => f.firmware), y: fleet.firmware.map((f) => f.devices) },
    ], { title: { text: "Devices per firmware" }, xaxis: { type: "category" }, yaxis: { title: { text: "devices" } } }));
    const unit = (d) => (d.unit ? ` (${d.unit})` : "");
    ftOps.chartOr("battery-chart", fleet.battery.values.length > 0, (el) =>
      ftCharts.histogram(el, "Latest battery level per device", fleet.battery.values, `battery${unit(fleet.battery)}`));
    ftOps.chartOr("signal-chart", fleet.signal.values.length > 0, (el) =>
      ftCharts.histogram(el, "Latest signal strength per device", fleet.signal.values, `rssi${unit(fleet.signal)}`));
  }

  function update(fleet) {
    ftOps.fill(document, fleet);
    document.getElementById("no-devices").hidden = fleet.totals.devices > 0;
    ftOps.rows(document.querySelector("#projects tbody"), fleet.projects, (p) => [
      { text: `${p.customer_name} / ${p.project_name}`, href: `?project=${p.project_id}&stale_minutes=${fleet.stale_after_seconds / 60}` },
      { text: String(p.devices), num: true }, { text: String(p.online), num: true },
      { text: String(p.offline), num: true }, { text: String(p.never_seen), num: true },
    ], "project");
    const stale = document.getElementById("stale-devices");
    ftOps.rows(stale.tBodies[0], fleet.stale, (d) => [
      { text: d.serial, href: `/dashboards/devices/${d.device_id}` }, { text: d.project_name },
      { text: ftOps.utc(d.last_seen) }, { text: ftOps.duration(d.silent_seconds), num: true, value: d.silent_seconds },
      { text: d.online ? "online" : (d.online === false ? "offline" : "no status") }, { text: d.firmware || "—" },
    ], "device");
    stale.hidden = fleet.stale.length === 0;
    document.getElementById("stale-empty").hidden = fleet.stale.length > 0;
    document.getElementById("stale-more").hidden = fleet.totals.stale <= fleet.stale.length;
    draw(fleet);
  }

  draw(initial);
  ftOps.poll(() => `/fleet?${params}`, 10, update);
})();
