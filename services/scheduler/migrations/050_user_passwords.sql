-- Sign-in for people (the console): an optional e-mail to sign in with, and a password kept
-- only as its argon2id hash. API tokens stay for programs; a sign-in issues a fresh token.
ALTER TABLE users
    ADD COLUMN email          text,
    ADD COLUMN password_hash  text,
    ADD COLUMN password_set_at timestamptz;
CREATE UNIQUE INDEX users_email ON users (lower(email)) WHERE email IS NOT NULL;
