-- Webhook outbox. A row is written in the transaction of the state change it
-- reports (only while webhooks are configured), so an event exists exactly
-- when its change committed. The body is built from the current state when
-- each attempt is sent. Times are unix milliseconds.
CREATE TABLE webhook_events (
    id              TEXT    NOT NULL PRIMARY KEY, -- the event id receivers dedupe on
    type            TEXT    NOT NULL,             -- challenge.approved, device.linked, ...
    object_id       TEXT    NOT NULL,             -- the challenge or device
    user_id         TEXT    NOT NULL DEFAULT '',
    actor_type      TEXT    NOT NULL DEFAULT '',  -- as in the audit log
    actor           TEXT    NOT NULL DEFAULT '',
    detail          TEXT    NOT NULL DEFAULT '',  -- the audit entry's JSON detail, '' when none
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,   -- attempts claimed so far; fences a stale sender
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,                      -- an instance is sending until then
    delivered_at    INTEGER,
    failed_at       INTEGER,                      -- given up (24 hours of failures)
    last_status     TEXT    NOT NULL DEFAULT ''   -- outcome of the last attempt: "200", "500", "timeout", ...
) STRICT;
-- The dispatcher's claim: undelivered, unfailed events in creation order.
CREATE INDEX webhook_events_due ON webhook_events (created_at, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_events_object ON webhook_events (object_id);
