-- Which tenant limit refused a request (`rpm`, `max_concurrency`, `daily_budget_usd`,
-- …), from `request.finished.rejected_by`; '' when none did. Rows projected before
-- this migration read '' until `relay rebuild requests` replays them.
-- MySQL/MariaDB version.
ALTER TABLE request_log ADD COLUMN rejected_by VARCHAR(64) NOT NULL DEFAULT '';
-- Rejections by limit over a range read only the refused rows.
CREATE INDEX request_log_rejected_time ON request_log (rejected_by, occurred_at_ms);
