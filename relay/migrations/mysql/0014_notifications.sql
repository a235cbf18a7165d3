-- Notification targets and the delivery record (issue 14). The outbox itself is a
-- projection (notification_outbox); these tables are relay state, never reset by a
-- rebuild, so a replay sends nothing twice.
-- MySQL/MariaDB version.
CREATE TABLE IF NOT EXISTS notification_targets (
    id             VARCHAR(64) NOT NULL PRIMARY KEY,
    -- '' for an operator target; else the tenant whose alerts it receives.
    tenant         VARCHAR(64) NOT NULL,
    kind           VARCHAR(64) NOT NULL,
    name           VARCHAR(255) NOT NULL,
    -- Sealed: webhook URLs of Slack, Feishu and DingTalk are credentials (a URL of at
    -- most 2048 bytes seals to about 2800 characters).
    url_sealed     VARCHAR(3072) NOT NULL,
    url_display    VARCHAR(2048) NOT NULL,
    -- Up to 10 comma-separated e-mail recipients, or a Telegram chat id.
    address        VARCHAR(3072) NOT NULL,
    secret_sealed  VARCHAR(1024),
    -- JSON array of at most 32 event filters.
    events         VARCHAR(2048) NOT NULL,
    rate_per_min   BIGINT NOT NULL,
    enabled        BIGINT NOT NULL DEFAULT 1,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX notification_targets_tenant ON notification_targets (tenant);

-- One row per (outbox event, target): what was sent, or why not. status: pending,
-- delivered, failed (gave up after the maximum age), dropped (target rate limit),
-- cancelled (target deleted).
CREATE TABLE IF NOT EXISTS notification_deliveries (
    event_id           VARCHAR(64) NOT NULL,
    target_id          VARCHAR(64) NOT NULL,
    tenant             VARCHAR(64) NOT NULL,
    kind               VARCHAR(64) NOT NULL,
    status             VARCHAR(64) NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    created_at_ms      BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    last_attempt_at_ms BIGINT,
    delivered_at_ms    BIGINT,
    response_status    BIGINT,
    last_error         VARCHAR(8000) NOT NULL DEFAULT '',
    PRIMARY KEY (event_id, target_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at_ms);
CREATE INDEX notification_deliveries_target ON notification_deliveries (target_id, created_at_ms);

-- How far the notifier has read the outbox (by log position).
CREATE TABLE IF NOT EXISTS notifier_cursor (
    name     VARCHAR(128) NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
