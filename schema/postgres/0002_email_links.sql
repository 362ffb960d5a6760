-- Single-use links mailed to users: the approval link of a challenge, and
-- the "This wasn't me" link of a new-device notice. Only the token's hash
-- is kept.
CREATE TABLE email_links (
    hash          TEXT    NOT NULL PRIMARY KEY,
    kind          TEXT    NOT NULL,
    challenge_id  TEXT    NOT NULL DEFAULT '',
    device_id     TEXT    NOT NULL DEFAULT '',
    user_id       TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    used_at       BIGINT
);
CREATE INDEX email_links_expires ON email_links (expires_at);
