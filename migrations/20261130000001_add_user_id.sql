-- The id of the user who published a message, from their verified token (`sub`), or from a
-- trusted producer writing to Kafka directly. Absent for anonymous and older messages.
-- Nullable without a default: adding it rewrites nothing.
alter table messages add column user_id text;
