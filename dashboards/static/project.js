// The project page's charts: quadrant, adoption by feature, events per day by feature.
// Every chart follows the page's window (the server rendered the data for it).
(function () {
  const features = ftCharts.data("features-data") || [];
  const daily = ftCharts.data("daily-data") || [];
  const lines = ftCharts.data("quadrant-lines") || { user: 0.5, business: 0.5 };
  const name = (f) => f.feature_name || f.feature_key;

  const assessed = features.filter((f) => f.user_value !== null && f.business_value !== null);
  ftCharts.quadrant("quadrant-chart", "User value × business value",
    assessed.map((f) => ({ label: name(f), x: f.user_value, y: f.business_value, recommendation: f.recommendation })),
    lines.user, lines.business);

  ftCharts.bars("adoption-chart", "Adoption and stickiness by feature", [
    { name: "adoption", x: features.map(name), y: features.map((f) => f.adoption) },
    { name: "stickiness", x: features.map(name), y: features.map((f) => f.stickiness) },
  ], { percent: true });

  const byFeature = {};
  daily.forEach((d) => { (byFeature[d.feature_key] = byFeature[d.feature_key] || { x: [], y: [] }); byFeature[d.feature_key].x.push(d.day); byFeature[d.feature_key].y.push(d.events); });
  const names = Object.fromEntries(features.map((f) => [f.feature_key, name(f)]));
  ftCharts.lines("usage-chart", "Events per day by feature",
    Object.keys(byFeature).map((k) => ({ name: names[k] || k, x: byFeature[k].x, y: byFeature[k].y })), "events");
})();
