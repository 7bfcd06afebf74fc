-- E-mail addresses compare by one key, computed by the server
-- (teleconsult.accounts.emails.email_key: NFKC, full case folding, NFKC), not by
-- lower(), whose result depends on the database's locale and differs from the
-- key the login rate limiter uses (Turkish İ gave a fresh limiter bucket).
--
-- Existing rows get lower(normalize(email, NFKC)), which equals the server's key
-- for every ASCII address. Should two existing rows fold to the same key, the
-- older keeps it and the newer gets a key that matches no address (its id), so
-- this migration cannot fail on old data; such an account then cannot sign in
-- until an operator sets its key.

ALTER TABLE users ADD COLUMN email_key text;

UPDATE users u SET email_key = CASE WHEN k.rank = 1 THEN k.key ELSE 'unmatched:' || u.id::text END
FROM (
    SELECT id, lower(normalize(email, NFKC)) AS key,
           row_number() OVER (PARTITION BY lower(normalize(email, NFKC))
                              ORDER BY created_at, id) AS rank
    FROM users
) k
WHERE k.id = u.id;

ALTER TABLE users ALTER COLUMN email_key SET NOT NULL;

CREATE UNIQUE INDEX users_email_key_unique ON users (email_key);
DROP INDEX users_email_key;
