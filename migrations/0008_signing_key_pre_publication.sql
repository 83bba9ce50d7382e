-- Signing-key pre-publication: a rotation first adds the next key as NEXT (published in the JWKS,
-- never signing) with the time it becomes ACTIVE (activates_at), so every JWKS cache has it
-- before any token names it. The first replica that signs or reads the keys after activates_at
-- promotes it in one transaction: NEXT -> ACTIVE, the old ACTIVE -> RETIRED (published until
-- every token it signed has expired). An emergency rotation (immediate) skips the NEXT phase.
--
-- activates_at: for a NEXT key when it is due; for an ACTIVE or RETIRED key when it became
-- ACTIVE (keys from before this migration: their created_at, which is when they did).
--
-- Statements end with ';' at the end of a line.

-- 0001 declared the state check inline, so PostgreSQL (and PGlite) named it signing_keys_state_check.
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_state_check;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_state_check CHECK (state IN ('NEXT', 'ACTIVE', 'RETIRED'));
ALTER TABLE signing_keys ADD COLUMN activates_at timestamptz;
UPDATE signing_keys SET activates_at = created_at;
ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL;
-- The previous release inserts keys (its rotations: ACTIVE at once) without the column while a
-- rolling upgrade runs both; such a key became active when it was inserted.
ALTER TABLE signing_keys ALTER COLUMN activates_at SET DEFAULT now();
-- At most one key waits to become active, as at most one is (signing_keys_one_active).
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'NEXT';
