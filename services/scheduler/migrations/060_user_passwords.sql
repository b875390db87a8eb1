-- Sign-in for people (the console): an optional e-mail to sign in with, and a password kept
-- only as its argon2id hash. API tokens stay for programs; a sign-in issues a fresh token.
ALTER TABLE users
    ADD COLUMN IF NOT EXISTS email          text,
    ADD COLUMN IF NOT EXISTS password_hash  text,
    ADD COLUMN IF NOT EXISTS password_set_at timestamptz;
CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (lower(email)) WHERE email IS NOT NULL;
