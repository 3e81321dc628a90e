-- The registry API: a surrogate id for deliveries, metric conditions that count as use,
-- and the read views the API lists from.
ALTER TABLE deliveries ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_id_key UNIQUE (id);

-- e.g. [{"metric": "dimming_level", "op": ">", "value": 0}]
ALTER TABLE features ADD COLUMN usage_metrics jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(usage_metrics) = 'array');

CREATE INDEX projects_customer_idx ON projects (customer_id);
CREATE INDEX deliveries_feature_idx ON deliveries (feature_id);

CREATE VIEW project_details AS
SELECT p.id, p.customer_id, c.name AS customer_name, p.name, p.contract_value, p.currency,
       p.go_live_date, p.status, p.retention_days, p.created_at,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')::int
           AS devices
FROM projects p JOIN customers c ON c.id = p.customer_id;

CREATE VIEW delivery_details AS
SELECT dl.id, dl.project_id, dl.feature_id, f.key AS feature_key, f.name AS feature_name,
       dl.status, dl.delivered_on, dl.cost_person_days, dl.contract_line_value,
       dl.business_score, dl.strategic, dl.notes, dl.created_at
FROM deliveries dl JOIN features f ON f.id = dl.feature_id;

CREATE VIEW device_details AS
SELECT d.id, d.serial, d.project_id, d.model, d.firmware, d.site, d.tags, d.status,
       s.online, s.last_seen, d.created_at, d.revoked_at
FROM devices d LEFT JOIN device_state s ON s.device_id = d.id;
