// Refreshes the usage table in place every few seconds, so the page stays live without reloads.
(function () {
  const table = document.getElementById("usage");
  if (!table) return;
  const project = table.dataset.project;
  const live = document.getElementById("live");
  const REFRESH_MS = 5000;

  function render(usage) {
    const tbody = table.querySelector("tbody");
    const top = Math.max(0, ...usage.features.map((f) => f.events));
    tbody.replaceChildren(...usage.features.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.feature = f.feature_key;
      const cells = [
        f.feature_name || f.feature_key,
        f.delivery_status || "not delivered",
        String(f.events),
        "",
        String(f.devices_using),
        f.last_used_hour ? f.last_used_hour.slice(0, 13).replace("T", " ") + ":00" : "never",
      ];
      const classes = ["", f.delivery_status ? "" : "warn", "num events", "", "num devices", "last"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (classes[i]) td.className = classes[i];
        if (i === 3) {
          const bar = document.createElement("span");
          bar.className = "bar";
          bar.style.width = (top ? (100 * f.events) / top : 0).toFixed(1) + "%";
          td.appendChild(bar);
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      });
      return tr;
    }));
    document.getElementById("reporting").textContent = usage.devices_reporting;
  }

  async function refresh() {
    try {
      const until = new Date();
      const since = new Date(until.getTime() - 7 * 24 * 3600 * 1000);
      const url = `/projects/${project}/usage?since=${since.toISOString()}&until=${until.toISOString()}`;
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(response.status);
      render(await response.json());
      live.textContent = "live · updated " + until.toLocaleTimeString();
      live.classList.remove("stale");
    } catch (err) {
      live.textContent = "offline · retrying";
      live.classList.add("stale");
    }
  }
  setInterval(refresh, REFRESH_MS);
})();
