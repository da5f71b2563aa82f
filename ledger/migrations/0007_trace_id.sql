-- Every receipt carries the OpenTelemetry trace of the event that led to it, when tracing was on
-- and the trace sampled (decisions §45); null otherwise, and on receipts written before.
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS trace_id Nullable(String);
