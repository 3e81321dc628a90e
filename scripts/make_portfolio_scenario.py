import yaml
features = [
 ("remote_unlock","Remote unlock","access"),("access_logs","Access logs","access"),("guest_access","Guest access","access"),
 ("tamper_alerts","Tamper alerts","security"),("geofencing","Geofencing","security"),
 ("energy_report","Energy report","energy"),("demand_response","Demand response","energy"),("solar_monitoring","Solar monitoring","energy"),
 ("scheduled_dimming","Scheduled dimming","lighting"),("occupancy_alerts","Occupancy alerts","building"),
 ("air_quality","Air quality","building"),("water_leak","Water leak alerts","building"),("noise_monitoring","Noise monitoring","building"),
 ("temperature_alerts","Temperature alerts","cold chain"),("cold_chain","Cold-chain compliance report","cold chain"),
 ("fleet_tracking","Fleet tracking","mobility"),("route_optimisation","Route optimisation","mobility"),("asset_tracking","Asset tracking","mobility"),
 ("predictive_maintenance","Predictive maintenance","service"),("firmware_ota","Firmware over the air","platform"),
]
HEAVY = {"per_device_day": 0.85, "events_per_use": [2, 8], "diurnal": "business", "weekly": "weekdays"}
STEADY = {"per_device_day": 0.5, "events_per_use": [1, 3]}
LIGHT = {"per_device_day": 0.08, "events_per_use": [1, 2], "never_share": 0.6}
UNUSED = {"per_device_day": 0.0}
GROWING = {"per_device_day": 0.7, "events_per_use": [1, 4], "adoption": {"start": 0.1, "end": 0.9, "ramp_days": 60}}
FADING = {"per_device_day": 0.6, "events_per_use": [1, 3], "adoption": {"start": 0.9, "end": 0.15, "ramp_days": 45}}
NIGHT = {"per_device_day": 0.9, "events_per_use": [4, 10], "diurnal": "night"}
# Alarms: switched on to stand guard, judged by being enabled rather than by how often they fire.
STANDING = {"tamper_alerts", "water_leak", "temperature_alerts"}
def d(feature, value, score, usage, strategic=False, cost=None, enabled=None, delivered=None):
    out = {"feature": feature, "contract_line_value": value, "business_score": score, "usage": usage}
    if delivered is not None: out["delivered_days_ago"] = delivered  # added after go-live
    if strategic: out["strategic"] = True
    if cost: out["cost_person_days"] = cost
    if enabled is not None: out["enabled_share"] = enabled
    return out
def fleet(count, prefix, model, fw, **kw):
    f = {"count": count, "serial_prefix": prefix, "model": model,
         "firmware": [{"version": v, "share": s} for v, s in fw], "telemetry_every_minutes": 360}
    f.update(kw); return f
customers = [
 {"name": "Hanse Freight", "tier": "head", "industry": "logistics", "lifecycle_stage": "expansion", "projects": [
   {"name": "Parcel Lockers DE", "contract_value": 900000, "go_live_days_ago": 200,
    "fleet": fleet(400, "hf-lck", "LX-200", [("1.4.2", 1), ("1.5.0", 3)], offline={"share": 0.05, "per_device_month": 2, "mean_hours": 8}, reboots_per_device_month=0.5, clock_drift_max_s=30, reports_enabled=True),
    "deliveries": [d("remote_unlock", 250000, 5, HEAVY, cost=120), d("access_logs", 60000, 3, STEADY, cost=40),
                   d("tamper_alerts", 90000, 4, UNUSED, strategic=True, cost=60, enabled=0.97), d("firmware_ota", 30000, 2, LIGHT, cost=20, delivered=20)]},
   {"name": "Reefer Fleet", "contract_value": 650000, "go_live_days_ago": 150,
    "fleet": fleet(350, "hf-rfr", "CT-9", [("3.1.0", 1)], offline={"share": 0.3, "per_device_month": 6, "mean_hours": 12}),
    "deliveries": [d("fleet_tracking", 200000, 5, HEAVY, cost=100), d("temperature_alerts", 120000, 4, STEADY, cost=50),
                   d("cold_chain", 90000, 4, GROWING, cost=60), d("route_optimisation", 150000, 5, UNUSED, strategic=True, cost=140)]},
 ]},
 {"name": "Stadtwerke Nord", "tier": "head", "industry": "utilities", "lifecycle_stage": "renewal", "projects": [
   {"name": "Street Lighting", "contract_value": 700000, "go_live_days_ago": 365,
    "fleet": fleet(300, "swn-lgt", "SL-4", [("2.0.1", 2), ("2.1.0", 1)]),
    "deliveries": [d("scheduled_dimming", 220000, 5, NIGHT, cost=90), d("energy_report", 80000, 4, STEADY, cost=30),
                   d("demand_response", 160000, 5, FADING, strategic=True, cost=110), d("predictive_maintenance", 70000, 3, LIGHT, cost=80, delivered=55)]},
   {"name": "Solar Parks", "contract_value": 300000, "go_live_days_ago": 80,
    "fleet": fleet(300, "swn-sol", "PV-2", [("1.0.0", 1)]),
    "deliveries": [d("solar_monitoring", 150000, 5, HEAVY, cost=70), d("energy_report", 30000, 3, STEADY, cost=10)]},
 ]},
 {"name": "Nordlicht Hotels", "tier": "waist", "industry": "hospitality", "lifecycle_stage": "adoption", "projects": [
   {"name": "Guest Rooms", "contract_value": 180000, "go_live_days_ago": 45,
    "fleet": fleet(250, "nlh-room", "RC-3", [("0.9.8", 1), ("1.0.0", 3)], reboots_per_device_month=2),
    "deliveries": [d("remote_unlock", 50000, 4, GROWING, cost=20), d("guest_access", 40000, 3, STEADY, cost=25),
                   d("noise_monitoring", 30000, 2, UNUSED, cost=30), d("air_quality", 20000, 2, LIGHT, cost=15)],
    "undelivered_use": [{"feature": "occupancy_alerts", "usage": {"per_device_day": 0.3, "never_share": 0.5}}]},
   {"name": "Conference Centre", "contract_value": 60000, "go_live_days_ago": 100,
    "fleet": fleet(50, "nlh-conf", "RC-3", [("1.0.0", 1)]),
    "deliveries": [d("occupancy_alerts", 20000, 3, STEADY, cost=10), d("air_quality", 15000, 3, STEADY, cost=10)]},
 ]},
 {"name": "Campus Facilities GmbH", "tier": "waist", "industry": "real estate", "lifecycle_stage": "at_risk", "projects": [
   {"name": "Office Towers", "contract_value": 220000, "go_live_days_ago": 300,
    "fleet": fleet(400, "cf-twr", "BM-1", [("4.2.0", 1)], offline={"share": 0.2, "per_device_month": 3, "mean_hours": 24}),
    "deliveries": [d("occupancy_alerts", 60000, 4, FADING, cost=40), d("air_quality", 50000, 3, LIGHT, cost=30),
                   d("water_leak", 40000, 4, UNUSED, strategic=True, cost=25), d("energy_report", 30000, 2, STEADY, cost=15)]},
   {"name": "Parking", "contract_value": 90000, "go_live_days_ago": 90,
    "fleet": fleet(250, "cf-prk", "PK-2", [("1.1.0", 1)]),
    "deliveries": [d("remote_unlock", 30000, 3, HEAVY, cost=15), d("geofencing", 40000, 4, UNUSED, cost=35)]},
 ]},
 {"name": "Kleinbauer Hof", "tier": "tail", "industry": "agriculture", "lifecycle_stage": "onboarding", "projects": [
   {"name": "Barn Sensors", "contract_value": 12000, "go_live_days_ago": 20,
    "fleet": fleet(400, "kh-barn", "AG-1", [("0.5.0", 1)], offline={"share": 0.4, "per_device_month": 8, "mean_hours": 6}),
    "deliveries": [d("temperature_alerts", 5000, 3, STEADY, cost=5), d("water_leak", 3000, 2, LIGHT, cost=5)]},
   {"name": "Tractor Tracking", "contract_value": 8000, "go_live_days_ago": 60,
    "fleet": fleet(150, "kh-trk", "GT-3", [("2.0.0", 1)]),
    "deliveries": [d("asset_tracking", 6000, 3, HEAVY, cost=5), d("geofencing", 2000, 2, LIGHT, cost=5, delivered=12)]},
 ]},
 {"name": "Mikro Bikes", "tier": "tail", "industry": "mobility", "lifecycle_stage": "adoption", "projects": [
   {"name": "E-Bike Rental", "contract_value": 25000, "go_live_days_ago": 70,
    "fleet": fleet(100, "mb-bike", "EB-2", [("1.2.0", 1), ("1.3.0", 1)], clock_drift_max_s=60),
    "deliveries": [d("remote_unlock", 8000, 4, HEAVY, cost=5), d("fleet_tracking", 6000, 4, STEADY, cost=5),
                   d("predictive_maintenance", 5000, 2, UNUSED, cost=15)]},
   {"name": "Pilot Scooters", "contract_value": 3000, "go_live_days_ago": 25,
    "fleet": fleet(50, "mb-sct", "SC-1", [("0.1.0", 1)]),
    "deliveries": [d("remote_unlock", 1500, 3, STEADY, cost=3), d("tamper_alerts", 1000, 2, LIGHT, cost=3)]},
 ]},
]
doc = {"name": "portfolio", "seed": 2026, "days": 90,
       "features": [{"key": k, "name": n, "product_line": p, **({"kind": "standing"} if k in STANDING else {})}
                    for k, n, p in features],
       "inject": {"malformed": 0.001, "duplicate": 0.002},
       "customers": customers}
total = sum(p["fleet"]["count"] for c in customers for p in c["projects"])
assert total == 3000, total
header = ("# A portfolio to try fieldtrack on: 6 customers across the tiers and industries, 12 projects,\n"
          "# 20 features, 3,000 devices, 90 days of history (`fieldtrack sim backfill --scenario portfolio`).\n"
          "# Usage archetypes: heavy, steady, light, unused, growing, fading, night-time; alarms are\n"
          "# standing features, and the parcel lockers report which are switched on; some features\n"
          "# were delivered after their project's go-live. Generated by\n"
          "# hand-written rules and kept readable; the format is in docs/scenarios.md.\n")
open("device_sim/scenarios/portfolio.yaml", "w").write(header + yaml.safe_dump(doc, sort_keys=False, width=110))
