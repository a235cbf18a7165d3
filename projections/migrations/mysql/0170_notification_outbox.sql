-- Projection "notifications": one row per event worth telling someone about, keyed by
-- the event id. Delivery state is not here: it lives in the relay's
-- notification_deliveries, which a rebuild of this projection does not reset.
-- MySQL/MariaDB version. details is a small JSON object stored as VARCHAR.
CREATE TABLE IF NOT EXISTS notification_outbox (
    event_id       VARCHAR(64) NOT NULL PRIMARY KEY,
    position       BIGINT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    kind           VARCHAR(64) NOT NULL,
    severity       VARCHAR(64) NOT NULL,
    audience       VARCHAR(64) NOT NULL,
    tenant         VARCHAR(64) NOT NULL,
    api_key        VARCHAR(64) NOT NULL,
    account        VARCHAR(64) NOT NULL,
    title          VARCHAR(1024) NOT NULL,
    message        VARCHAR(6000) NOT NULL,
    details        VARCHAR(4000) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX notification_outbox_position ON notification_outbox (position);
