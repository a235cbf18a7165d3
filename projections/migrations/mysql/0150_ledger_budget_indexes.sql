-- Budget limits sum a key's or a tenant's ledger rows since a window start.
-- MySQL/MariaDB version.
CREATE INDEX usage_ledger_key_time ON usage_ledger (api_key, occurred_at_ms);
CREATE INDEX usage_ledger_tenant_time ON usage_ledger (tenant, occurred_at_ms);
