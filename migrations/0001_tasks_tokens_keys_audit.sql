-- Tasks, their tokens, the signing keys shared by all replicas, and the audit trail.
-- Statements end with ';' at the end of a line (the runner splits on that); no $$ bodies.

CREATE TABLE tasks (
  task_id               text        PRIMARY KEY,
  owner_spiffe_id       text        NOT NULL,
  owner_trust_domain    text        NOT NULL,
  spec                  jsonb       NOT NULL,
  task_hash             text        NOT NULL,
  action                text        NOT NULL,
  audience              text        NOT NULL,
  scopes                jsonb       NOT NULL,
  ttl_seconds           integer     NOT NULL CHECK (ttl_seconds > 0),
  state                 text        NOT NULL CHECK (state IN ('PENDING_APPROVAL', 'ACTIVE', 'COMPLETED', 'CANCELLED', 'REVOKED', 'EXPIRED')),
  idempotency_key       text,
  owner_cert_thumbprint text        NOT NULL,
  created_at            timestamptz NOT NULL,
  expires_at            timestamptz NOT NULL,
  ended_at              timestamptz,
  ended_by              text,
  end_reason            text,
  CHECK ((state IN ('PENDING_APPROVAL', 'ACTIVE')) = (ended_at IS NULL))
);
CREATE UNIQUE INDEX tasks_owner_idempotency_key ON tasks (owner_spiffe_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_live_by_expiry ON tasks (expires_at) WHERE state IN ('PENDING_APPROVAL', 'ACTIVE');
CREATE INDEX tasks_by_owner ON tasks (owner_spiffe_id, created_at, task_id);
CREATE INDEX tasks_by_created ON tasks (created_at, task_id);

CREATE TABLE signing_keys (
  kid                    text        PRIMARY KEY,
  alg                    text        NOT NULL,
  public_jwk             jsonb       NOT NULL,
  -- AES-256-GCM under the key-encryption key: 12-byte IV, ciphertext, 16-byte tag.
  private_key_ciphertext bytea       NOT NULL,
  kek_id                 text        NOT NULL,
  state                  text        NOT NULL CHECK (state IN ('ACTIVE', 'RETIRED')),
  created_at             timestamptz NOT NULL,
  retired_at             timestamptz,
  -- A retired key stays published in the JWKS until every token it signed has expired.
  publish_until          timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'ACTIVE';

CREATE TABLE tokens (
  jti            text        PRIMARY KEY,
  task_id        text        NOT NULL REFERENCES tasks (task_id),
  kid            text        NOT NULL REFERENCES signing_keys (kid),
  subject        text        NOT NULL,
  audience       text        NOT NULL,
  scopes         jsonb       NOT NULL,
  cnf_thumbprint text        NOT NULL,
  issued_at      timestamptz NOT NULL,
  expires_at     timestamptz NOT NULL,
  revoked_at     timestamptz,
  revoke_reason  text
);
CREATE INDEX tokens_by_task ON tokens (task_id);
CREATE INDEX tokens_by_expiry ON tokens (expires_at);
CREATE INDEX tokens_by_kid_expiry ON tokens (kid, expires_at);

-- One row per hash chain: a task's events form one chain; events about no task (a probe of an
-- unknown task ID) form the 'broker' chain. Appending locks the head row.
CREATE TABLE audit_chains (
  chain_id  text    PRIMARY KEY,
  last_seq  integer NOT NULL,
  last_hash text    NOT NULL
);

CREATE TABLE audit_events (
  event_id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  chain_id              text        NOT NULL,
  seq                   integer     NOT NULL,
  task_id               text,
  event_type            text        NOT NULL,
  actor_spiffe_id       text        NOT NULL,
  actor_cert_thumbprint text,
  request_id            text        NOT NULL,
  occurred_at           timestamptz NOT NULL,
  details               jsonb       NOT NULL,
  prev_hash             text        NOT NULL,
  hash                  text        NOT NULL,
  UNIQUE (chain_id, seq)
);
CREATE INDEX audit_events_by_task ON audit_events (task_id, seq) WHERE task_id IS NOT NULL;
CREATE INDEX audit_events_by_time ON audit_events (occurred_at);
