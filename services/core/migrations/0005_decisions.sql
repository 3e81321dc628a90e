-- The decision log: what product managers decided about a feature (keep / iterate / cut), in
-- one project or across the portfolio (project_id NULL), why, and the evidence as it stood
-- at that moment (frozen as JSON: later data never changes it).
CREATE TABLE decisions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   bigint REFERENCES projects (id),
    feature_id   bigint NOT NULL REFERENCES features (id),
    decision     text NOT NULL CHECK (decision IN ('keep', 'iterate', 'cut')),
    rationale    text NOT NULL CHECK (length(rationale) BETWEEN 1 AND 5000),
    decided_by   text CHECK (length(decided_by) BETWEEN 1 AND 200),
    decided_at   timestamptz NOT NULL DEFAULT now(),
    -- length of the evidence window that ends at decided_at (and of the window after it)
    window_days  integer NOT NULL DEFAULT 30 CHECK (window_days BETWEEN 1 AND 400),
    evidence     jsonb NOT NULL CHECK (jsonb_typeof(evidence) = 'object')
);
CREATE INDEX decisions_project_idx ON decisions (project_id, decided_at DESC);
CREATE INDEX decisions_feature_idx ON decisions (feature_id, decided_at DESC);
CREATE INDEX decisions_decided_at_idx ON decisions (decided_at DESC);

CREATE VIEW decision_details AS
SELECT d.id, d.project_id, p.name AS project_name, c.name AS customer_name, d.feature_id,
       f.key AS feature_key, f.name AS feature_name,
       CASE WHEN d.project_id IS NULL THEN 'portfolio' ELSE 'project' END AS scope,
       d.decision, d.rationale, d.decided_by, d.decided_at, d.window_days, d.evidence
FROM decisions d
JOIN features f ON f.id = d.feature_id
LEFT JOIN projects p ON p.id = d.project_id
LEFT JOIN customers c ON c.id = p.customer_id;
