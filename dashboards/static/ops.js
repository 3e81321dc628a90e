// Shared by the ops pages (fleet, device, ingest): formatting as the server renders it,
// charts that give way to an empty-state message, and polling a JSON API for live refresh.
(function () {
  const pad = (n) => String(n).padStart(2, "0");

  // "2026-03-02 10:04:05 UTC", as the `utc` template filter writes it.
  function utc(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }

  // "3 d 4 h", "12 min 5 s", as the `duration` template filter writes it.
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    let left = Math.max(Math.floor(seconds), 0);
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
      if (left >= size || (unit === "s" && !parts.length)) {
        parts.push(`${Math.floor(left / size)} ${unit}`);
        left %= size;
      }
    }
    return parts.slice(0, 2).join(" ");
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
  }

  // A rate with the decimals its size needs, as the `rate` template filter writes it.
  function rate(value) {
    if (value === null || value === undefined) return "—";
    return Number(value).toFixed(value >= 10 ? 1 : value >= 1 ? 2 : 4);
  }

  function pct(value) {
    return value === null || value === undefined ? "—" : `${Math.round(100 * value)}%`;
  }

  // Set every [data-field="a.b"] inside root to format(value at that path).
  function fill(root, data, formats) {
    root.querySelectorAll("[data-field]").forEach((el) => {
      const path = el.dataset.field;
      const value = path.split(".").reduce((v, k) => (v === null || v === undefined ? v : v[k]), data);
      const format = (formats || {})[path];
      el.textContent = format ? format(value) : (value === null || value === undefined ? "—" : String(value));
    });
  }

  // Draw the chart when there is data, else hide it and show its empty-state message
  // (`${id}` → `${id minus "-chart"}-empty`), so no chart is ever drawn empty.
  function chartOr(id, hasData, drawIt) {
    const el = document.getElementById(id);
    if (!el) return;
    const empty = document.getElementById(id.replace(/-chart$/, "-empty"));
    el.hidden = !hasData;
    if (empty) empty.hidden = hasData;
    if (hasData) drawIt(el);
    else el.dataset.points = "0";
  }

  // A table body rebuilt from rows of cells: [{text, href, num, value}] (text only: no HTML).
  function rows(tbody, items, cellsOf, keyName) {
    tbody.replaceChildren(...items.map((item) => {
      const tr = document.createElement("tr");
      if (keyName) tr.dataset[keyName] = item[keyName === "device" ? "device_id" : `${keyName}_id`];
      cellsOf(item).forEach((c) => {
        const td = document.createElement("td");
        if (c.num) td.className = "num";
        if (c.value !== undefined) td.dataset.value = String(c.value);
        if (c.href) {
          const a = document.createElement("a");
          a.href = c.href;
          a.textContent = c.text;
          td.appendChild(a);
        } else if (c.code) {
          const code = document.createElement("code");
          code.textContent = c.text;
          td.appendChild(code);
        } else {
          td.textContent = c.text;
        }
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  // Fetch url every `seconds`, hand the JSON to update(); the #live label says how fresh.
  function poll(url, seconds, update) {
    const live = document.getElementById("live");
    async function tick() {
      try {
        const response = await fetch(typeof url === "function" ? url() : url, {
          credentials: "same-origin", headers: { Accept: "application/json" },
        });
        if (response.status === 401 || response.status === 303) { window.location.reload(); return; }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const data = await response.json();
        update(data);
        if (live) { live.textContent = `updated ${utc(data.generated_at || new Date().toISOString())}`; live.classList.remove("stale"); }
      } catch (err) {
        if (live) { live.textContent = `not refreshed: ${err.message}`; live.classList.add("stale"); }
      }
    }
    window.setInterval(tick, seconds * 1000);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  }

  // Selects marked data-autosubmit submit their form when changed.
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });

  window.ftOps = { utc, duration, fixed, rate, pct, fill, chartOr, rows, poll };
})();
