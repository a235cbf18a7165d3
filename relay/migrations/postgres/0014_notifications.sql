-- Notification targets and the delivery record (issue 14). The outbox itself is a
-- projection (notification_outbox); these tables are relay state, never reset by a
-- rebuild, so a replay sends nothing twice.
CREATE TABLE IF NOT EXISTS notification_targets (
    id             TEXT PRIMARY KEY,
    -- '' for an operator target; else the tenant whose alerts it receives.
    tenant         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    -- Sealed: webhook URLs of Slack, Feishu and DingTalk are credentials.
    url_sealed     TEXT NOT NULL,
    url_display    TEXT NOT NULL,
    address        TEXT NOT NULL,
    secret_sealed  TEXT,
    events         TEXT NOT NULL,
    rate_per_min   BIGINT NOT NULL,
    enabled        BIGINT NOT NULL DEFAULT 1,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS notification_targets_tenant ON notification_targets (tenant);

-- One row per (outbox event, target): what was sent, or why not. status: pending,
-- delivered, failed (gave up after the maximum age), dropped (target rate limit),
-- cancelled (target deleted).
CREATE TABLE IF NOT EXISTS notification_deliveries (
    event_id           TEXT NOT NULL,
    target_id          TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    kind               TEXT NOT NULL,
    status             TEXT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    created_at_ms      BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    last_attempt_at_ms BIGINT,
    delivered_at_ms    BIGINT,
    response_status    BIGINT,
    last_error         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (event_id, target_id)
);
CREATE INDEX IF NOT EXISTS notification_deliveries_due ON notification_deliveries (status, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS notification_deliveries_target ON notification_deliveries (target_id, created_at_ms);

-- How far the notifier has read the outbox (by log position).
CREATE TABLE IF NOT EXISTS notifier_cursor (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
