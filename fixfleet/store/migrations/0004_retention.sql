-- Retention: old webhook deliveries are found by when they arrived (closed tasks by
-- tasks_status_idx: status, updated_at).
CREATE INDEX IF NOT EXISTS webhook_deliveries_received_idx ON webhook_deliveries (received_at);
