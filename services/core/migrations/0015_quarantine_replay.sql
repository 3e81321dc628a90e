-- `fieldtrack quarantine replay` offers quarantined messages to the store again after a fix.
-- A message it stores, or finds already stored, is marked rather than deleted: the row keeps
-- the bytes and the reason it was refused as a record, and `replayed_at IS NULL` is what is
-- still pending. No index: a replay walks the primary key once, while an index would cost
-- every quarantined message an entry (garbage must stay cheap, migration 0011). NOT VALID:
-- the rows already there are all unmarked, so the migration need not scan them.
ALTER TABLE quarantine
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replay_outcome text,
    ADD CONSTRAINT quarantine_replay_outcome
        CHECK (replay_outcome IN ('stored', 'duplicate')) NOT VALID,
    ADD CONSTRAINT quarantine_replay_marked
        CHECK ((replayed_at IS NULL) = (replay_outcome IS NULL)) NOT VALID;
