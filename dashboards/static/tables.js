// Sortable and filterable tables: click a header with data-sort; inputs with data-filter-for.
(function () {
  function cellValue(row, index, kind) {
    const cell = row.cells[index];
    const raw = cell ? (cell.dataset.value ?? cell.textContent.trim()) : "";
    return kind === "num" ? parseFloat(raw) || 0 : raw.toLowerCase();
  }

  document.querySelectorAll("table[data-sortable]").forEach((table) => {
    table.querySelectorAll("th[data-sort]").forEach((th, _, all) => {
      th.addEventListener("click", () => {
        const index = Array.from(th.parentNode.children).indexOf(th);
        const descending = th.getAttribute("aria-sort") === "ascending";
        all.forEach((other) => other.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = cellValue(a, index, th.dataset.sort), y = cellValue(b, index, th.dataset.sort);
          return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
        });
        body.replaceChildren(...rows);
      });
    });
  });

  document.querySelectorAll("[data-filter-for]").forEach((control) => {
    const table = document.getElementById(control.dataset.filterFor);
    const controls = document.querySelectorAll(`[data-filter-for="${control.dataset.filterFor}"]`);
    control.addEventListener("input", () => {
      Array.from(table.tBodies[0].rows).forEach((row) => {
        const visible = Array.from(controls).every((c) => {
          const wanted = c.value.trim().toLowerCase();
          if (!wanted) return true;
          const text = c.dataset.column ? (row.dataset[c.dataset.column] || "") : row.textContent;
          return c.dataset.column ? text.toLowerCase() === wanted : text.toLowerCase().includes(wanted);
        });
        row.hidden = !visible;
      });
    });
  });
})();
