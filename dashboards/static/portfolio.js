// Portfolio charts: each feature's adoption broken down by customer tier and by industry.
(function () {
  const features = ftCharts.data("portfolio-data");
  if (!features) return;
  function breakdown(el, title, key) {
    const groups = [...new Set(features.flatMap((f) => f[key].map((b) => b.group)))].sort();
    ftCharts.bars(el, title, groups.map((g) => ({
      name: g, x: features.map((f) => f.feature_key),
      y: features.map((f) => { const b = f[key].find((x) => x.group === g); return b ? b.adoption : null; }),
    })), { percent: true });
  }
  breakdown("tier-chart", "Adoption by customer tier", "by_tier");
  breakdown("industry-chart", "Adoption by industry", "by_industry");
})();
