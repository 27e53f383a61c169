-- pgsteer auth_query: how pooled mode looks up a user's secret in Postgres.
--
-- pgsteer logs in as a dedicated role (auth_user) and calls pgsteer.user_lookup($1) for a user
-- it has no auth_file entry for. The function runs with its owner's rights (SECURITY DEFINER,
-- so create it as a superuser) and returns only what authentication needs: the role name and
-- its password verifier (pg_authid.rolpassword), never other rows or columns. The verifier is
-- NULL, which pgsteer treats exactly like an unknown user, when the role has no password, its
-- password has expired (VALID UNTIL), or it is a superuser (superusers are not pooled; drop that
-- condition if you want them to be).
--
-- Run once per database pgsteer connects auth_user to, as a superuser:
--   CREATE ROLE pgsteer_auth LOGIN PASSWORD '...';
--   \i deploy/sql/auth_query.sql
-- and configure pgsteer with
--   auth_user = "pgsteer_auth"
--   auth_query = "SELECT uname, phash FROM pgsteer.user_lookup($1)"

CREATE SCHEMA IF NOT EXISTS pgsteer;
REVOKE ALL ON SCHEMA pgsteer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgsteer TO pgsteer_auth;

CREATE OR REPLACE FUNCTION pgsteer.user_lookup(i_username text, OUT uname text, OUT phash text)
RETURNS record
LANGUAGE sql
STABLE
SECURITY DEFINER
-- A SECURITY DEFINER function must not resolve names through a search_path its caller controls.
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT rolname::text,
           CASE WHEN rolsuper OR (rolvaliduntil IS NOT NULL AND rolvaliduntil < now())
                THEN NULL
                ELSE rolpassword
           END
      FROM pg_catalog.pg_authid
     WHERE rolname = i_username
       AND rolcanlogin
$$;

REVOKE ALL ON FUNCTION pgsteer.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgsteer.user_lookup(text) TO pgsteer_auth;
