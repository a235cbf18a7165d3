-- Projection "notifications": one row per event worth telling someone about, keyed by
-- the event id. Delivery state is not here: it lives in the relay's
-- notification_deliveries, which a rebuild of this projection does not reset.
CREATE TABLE IF NOT EXISTS notification_outbox (
    event_id       TEXT PRIMARY KEY,
    position       BIGINT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    severity       TEXT NOT NULL,
    audience       TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    api_key        TEXT NOT NULL,
    account        TEXT NOT NULL,
    title          TEXT NOT NULL,
    message        TEXT NOT NULL,
    details        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notification_outbox_position ON notification_outbox (position);
