-- approvald schema, version 1 (SQLite).
-- Times are INTEGER unix milliseconds (UTC); NULL where a time is absent.
-- Booleans are INTEGER 0/1. Tables are STRICT: a value of the wrong type is
-- refused instead of stored.

-- Secrets shared by every instance (signing key, watch-token key).
CREATE TABLE secrets (
    name       TEXT    NOT NULL PRIMARY KEY,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- Relying parties' API keys; only a hash of the key is stored.
CREATE TABLE api_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
-- A name is taken only by an unrevoked key.
CREATE UNIQUE INDEX api_keys_name_active ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE users (
    user_id          TEXT    NOT NULL PRIMARY KEY,
    email            TEXT    NOT NULL DEFAULT '',
    email_updated_at INTEGER NOT NULL DEFAULT 0,
    locked_until     INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE enrollments (
    id             TEXT    NOT NULL PRIMARY KEY,
    user_id        TEXT    NOT NULL,
    code_hash      TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    user_email     TEXT    NOT NULL DEFAULT '',
    authorized_by  TEXT    NOT NULL DEFAULT '',
    step_up_method TEXT    NOT NULL DEFAULT '',
    device_id      TEXT    NOT NULL DEFAULT '',
    device_name    TEXT    NOT NULL DEFAULT '',
    api_key_name   TEXT    NOT NULL DEFAULT '',
    version        INTEGER NOT NULL DEFAULT 1
) STRICT;
-- Codes are 40 bits: unique among pending enrollments only (a used code may come round again).
CREATE UNIQUE INDEX enrollments_code_hash_pending ON enrollments (code_hash) WHERE status = 'pending';
CREATE INDEX enrollments_code_hash ON enrollments (code_hash, created_at);
CREATE INDEX enrollments_user_status ON enrollments (user_id, status);
CREATE INDEX enrollments_status_expires ON enrollments (status, expires_at);

CREATE TABLE devices (
    id                 TEXT    NOT NULL PRIMARY KEY,
    user_id            TEXT    NOT NULL,
    name               TEXT    NOT NULL DEFAULT '',
    platform           TEXT    NOT NULL DEFAULT '',
    public_key         TEXT    NOT NULL,
    push_provider      TEXT    NOT NULL DEFAULT '',
    push_token         TEXT    NOT NULL DEFAULT '',
    push_token_invalid INTEGER NOT NULL DEFAULT 0,
    status             TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    last_seen_at       INTEGER,
    ended_at           INTEGER,
    enrollment_id      TEXT    NOT NULL DEFAULT '',
    retired_by         TEXT    NOT NULL DEFAULT '',
    link_ip            TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX devices_user_status ON devices (user_id, status, created_at);

CREATE TABLE challenges (
    id              TEXT    NOT NULL PRIMARY KEY,
    user_id         TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    context         TEXT    NOT NULL DEFAULT '', -- the JSON object as received
    user_email      TEXT    NOT NULL DEFAULT '',
    requester_ip    TEXT    NOT NULL DEFAULT '',
    requester_ua    TEXT    NOT NULL DEFAULT '',
    requester_key   TEXT    NOT NULL,
    methods         TEXT    NOT NULL,
    number          TEXT    NOT NULL DEFAULT '',
    status          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    decided_at      INTEGER,
    method          TEXT    NOT NULL DEFAULT '',
    device_id       TEXT    NOT NULL DEFAULT '',
    fraud_reported  INTEGER NOT NULL DEFAULT 0,
    result_token    TEXT    NOT NULL DEFAULT '',
    number_attempts INTEGER NOT NULL DEFAULT 0,
    delivery_push   TEXT    NOT NULL DEFAULT '',
    delivery_email  TEXT    NOT NULL DEFAULT '',
    push_devices    INTEGER NOT NULL DEFAULT 0,
    emails_sent     INTEGER NOT NULL DEFAULT 0,
    step_up_used_at INTEGER,
    api_key_name    TEXT    NOT NULL DEFAULT '',
    version         INTEGER NOT NULL DEFAULT 1
) STRICT;
CREATE INDEX challenges_user_status ON challenges (user_id, status, expires_at);
CREATE INDEX challenges_user_created ON challenges (user_id, created_at);
CREATE INDEX challenges_requester_status ON challenges (requester_key, status, expires_at);
CREATE INDEX challenges_requester_created ON challenges (requester_key, created_at);
CREATE INDEX challenges_status_expires ON challenges (status, expires_at);
-- One user's pending challenges never share a number.
CREATE UNIQUE INDEX challenges_pending_number ON challenges (user_id, number)
    WHERE status = 'pending' AND number <> '';

-- Idempotency-Key of challenge creation, scoped to the API key.
CREATE TABLE idempotency_keys (
    scope        TEXT    NOT NULL,
    idem_key     TEXT    NOT NULL,
    body_hash    TEXT    NOT NULL,
    challenge_id TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (scope, idem_key)
) STRICT;
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

-- Replay cache of device JWS (iss, jti).
CREATE TABLE jti_seen (
    iss        TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (iss, jti)
) STRICT;
CREATE INDEX jti_seen_expires ON jti_seen (expires_at);

-- Wrong enrollment codes, counted per IP key and overall.
CREATE TABLE code_failures (
    id     INTEGER NOT NULL PRIMARY KEY,
    ip_key TEXT    NOT NULL,
    at     INTEGER NOT NULL
) STRICT;
CREATE INDEX code_failures_at ON code_failures (at);
CREATE INDEX code_failures_ip_at ON code_failures (ip_key, at);

-- Fixed-window counters: one row per key, for its current window.
CREATE TABLE rate_counters (
    counter_key  TEXT    NOT NULL PRIMARY KEY,
    window_start INTEGER NOT NULL,
    hits         INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX rate_counters_expires ON rate_counters (expires_at);

CREATE TABLE audit_log (
    id          INTEGER NOT NULL PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor_type  TEXT    NOT NULL,
    actor       TEXT    NOT NULL DEFAULT '',
    event       TEXT    NOT NULL,
    object_type TEXT    NOT NULL DEFAULT '',
    object_id   TEXT    NOT NULL DEFAULT '',
    user_id     TEXT    NOT NULL DEFAULT '',
    ip          TEXT    NOT NULL DEFAULT '',
    detail      TEXT    NOT NULL DEFAULT '' -- JSON, '' when none
) STRICT;
CREATE INDEX audit_log_object ON audit_log (object_id, id);
