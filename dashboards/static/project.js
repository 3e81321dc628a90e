// The project page's charts: adoption × business value (staff only), weekly adoption with its
// interval, and devices using each feature per day. Every chart follows the page's window
// (the server rendered the data for it).
(function () {
  const features = ftCharts.data("features-data") || [];
  const daily = ftCharts.data("daily-data") || [];
  const adoption = ftCharts.data("adoption-data") || { features: [] };
  const rules = ftCharts.data("quadrant-rules");
  const names = Object.fromEntries(features.map((f) => [f.feature_key, f.feature_name || f.feature_key]));
  const name = (key) => names[key] || key;

  if (rules) {
    const judged = features.filter((f) => f.recommendation && f.business_value !== null);
    ftCharts.quadrant("quadrant-chart", "Adoption × business value",
      judged.map((f) => ({ label: name(f.feature_key), x: f.adoption, low: f.adoption_low, high: f.adoption_high,
                           y: f.business_value, recommendation: f.recommendation })),
      rules.cut, rules.business, rules.labels);
  }

  ftCharts.intervals("weekly-chart", "Weekly adoption (95 % interval)",
    adoption.features.filter((f) => f.weekly.length).map((f) => ({
      name: name(f.feature_key), x: f.weekly.map((w) => w.week), y: f.weekly.map((w) => w.adoption),
      low: f.weekly.map((w) => w.adoption_low), high: f.weekly.map((w) => w.adoption_high),
    })), "devices using ÷ reporting");

  const byFeature = {};
  daily.forEach((d) => { (byFeature[d.feature_key] = byFeature[d.feature_key] || { x: [], y: [] }); byFeature[d.feature_key].x.push(d.day); byFeature[d.feature_key].y.push(d.devices_using); });
  ftCharts.lines("usage-chart", "Devices using each feature per day",
    Object.keys(byFeature).map((k) => ({ name: name(k), x: byFeature[k].x, y: byFeature[k].y })), "devices");
})();
