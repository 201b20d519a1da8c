/**
 * The schema as plain SQL, for applications that do not migrate with TypeORM: what the
 * package ships as `sql/idempotency.sql` and what the CLI's `migrate` applies.
 *
 * The text lives in this module rather than being read from the .sql file at run time: the
 * package is built twice, and a module cannot find its own location in both builds
 * (`import.meta.url` does not compile to CommonJS, `__dirname` is undefined in an ES
 * module), so the file could only be found by guessing from the working directory.
 * `sql/idempotency.sql` is this text exactly (`nestjs-idempotency-postgres migrate --print
 * > sql/idempotency.sql` writes it), and test/e2e/schema-sql.spec.ts fails if they differ.
 *
 * Exported from the package as a string, not a function that applies it: each migration
 * tool runs SQL its own way, and the CLI's `migrate` is the runner the library offers.
 */
export const IDEMPOTENCY_SCHEMA_SQL = `-- The schema of nestjs-idempotency-postgres 0.1.0, as plain SQL: the tables
-- idempotency_keys and idempotency_settings, the index that purging reads, and the
-- trigger that enforces the records' state machine. It is what the library's TypeORM
-- migrations (idempotencyMigrations, up to AllowOperatorDeletes1796040000000) create,
-- for applications that migrate with other tools (Prisma, Drizzle, Kysely, psql).
--
-- Re-runnable: it brings an empty database, one at an earlier version of this schema,
-- or one migrated by the TypeORM migrations to the schema above, and does nothing to a
-- database that has it already. Rows are kept. Run it as it is:
--   psql -v ON_ERROR_STOP=1 -f idempotency.sql
--   npx nestjs-idempotency-postgres migrate
-- or as one multi-statement query (node-postgres client.query(text) without values).
-- Tools that wrap each migration in a transaction of their own (Drizzle, Kysely) take
-- the statements between BEGIN and COMMIT.
--
-- Unqualified names: the objects go in the first schema of the search_path, as the
-- TypeORM migrations put them.

BEGIN;

-- Concurrent appliers (several instances migrating at deploy) run one after the other:
-- without it, two CREATE TABLE IF NOT EXISTS can both find no table and one fails on the
-- catalog's unique index. The number is this library's own lock; the lock ends with the
-- transaction.
SELECT pg_advisory_xact_lock(1755116333678422320);

-- The state machine is enforced here too: CHECK constraints say what each status must
-- carry, and the trigger below refuses every transition the machine does not have,
-- whatever code issues the UPDATE.
CREATE TABLE IF NOT EXISTS idempotency_keys (
  scope           text        NOT NULL,
  method          text        NOT NULL,
  route           text        NOT NULL,
  idempotency_key text        NOT NULL,
  fingerprint     text        NOT NULL,
  status          text        NOT NULL,
  owner_token     uuid,
  locked_until    timestamptz,
  response        jsonb,
  created_at      timestamptz NOT NULL DEFAULT now(),
  completed_at    timestamptz,
  expires_at      timestamptz NOT NULL,
  CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, method, route, idempotency_key),
  CONSTRAINT idempotency_keys_status_check CHECK (status IN ('in_progress', 'completed')),
  CONSTRAINT idempotency_keys_key_check CHECK (char_length(idempotency_key) BETWEEN 1 AND 1024),
  CONSTRAINT idempotency_keys_in_progress_check CHECK (
    status <> 'in_progress'
    OR (owner_token IS NOT NULL AND locked_until IS NOT NULL AND response IS NULL AND completed_at IS NULL)),
  CONSTRAINT idempotency_keys_completed_check CHECK (
    status <> 'completed'
    OR (owner_token IS NULL AND locked_until IS NULL AND response IS NOT NULL AND completed_at IS NOT NULL))
);

-- Purging scans expired rows in expiry order through this index, never the table.
-- Created only when absent, and not with CREATE INDEX IF NOT EXISTS: that statement locks
-- the table against writes before it finds the index there, so a re-run on a live table
-- would queue every claim behind the longest open transaction.
DO $migrate$
BEGIN
  IF to_regclass('idempotency_keys_expires_at_idx') IS NULL THEN
    CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
  END IF;
END
$migrate$;

-- What every instance of an application must share: the secret that request
-- fingerprints are MACed with, created at random by the first instance that starts.
CREATE TABLE IF NOT EXISTS idempotency_settings (
  name       text        NOT NULL,
  value      text        NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT idempotency_settings_pkey PRIMARY KEY (name)
);

-- The transition guard. It compares against statement_timestamp(), as the store's SQL
-- does: now() is the transaction start, which can lie before a row-lock wait. A DELETE of
-- a completed, unexpired record is an operator's when the transaction sets
-- idempotency.operator_delete to on (IdempotencyService.deleteRecord(), the CLI's delete).
-- Replaced in place, so an existing trigger keeps calling it. The body is laid out as the
-- TypeORM migration wrote it, so that both give the same function source.
CREATE OR REPLACE FUNCTION idempotency_keys_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        at timestamptz := statement_timestamp();
        lease_live boolean;
        expired boolean;
      BEGIN
        IF TG_OP = 'INSERT' THEN
          IF NEW.status <> 'in_progress' THEN
            RAISE EXCEPTION 'idempotency_keys: a record is created in_progress, by a claim'
              USING ERRCODE = 'check_violation';
          END IF;
          RETURN NEW;
        END IF;
        lease_live := OLD.status = 'in_progress' AND OLD.locked_until > at;
        expired := OLD.expires_at <= at AND NOT lease_live;
        IF TG_OP = 'DELETE' THEN
          IF OLD.status = 'completed' AND NOT expired
             AND current_setting('idempotency.operator_delete', true) IS DISTINCT FROM 'on' THEN
            RAISE EXCEPTION 'idempotency_keys: a completed record is kept until it expires'
              USING ERRCODE = 'check_violation';
          END IF;
          RETURN OLD;
        END IF;
        IF (NEW.scope, NEW.method, NEW.route, NEW.idempotency_key)
           IS DISTINCT FROM (OLD.scope, OLD.method, OLD.route, OLD.idempotency_key) THEN
          RAISE EXCEPTION 'idempotency_keys: the identity of a record never changes'
            USING ERRCODE = 'check_violation';
        END IF;
        IF expired THEN
          RETURN NEW; -- an expired record counts as absent: it may be claimed afresh
        END IF;
        IF OLD.status = 'completed' THEN
          RAISE EXCEPTION 'idempotency_keys: a completed record is immutable until it expires'
            USING ERRCODE = 'check_violation';
        END IF;
        -- OLD.status = 'in_progress' from here on
        IF NEW.owner_token IS DISTINCT FROM OLD.owner_token AND NEW.status = 'in_progress' AND lease_live THEN
          RAISE EXCEPTION 'idempotency_keys: a record may be taken over only once its lease has lapsed'
            USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.status = 'in_progress' AND NEW.fingerprint IS DISTINCT FROM OLD.fingerprint THEN
          RAISE EXCEPTION 'idempotency_keys: the fingerprint of a live record never changes'
            USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
      END $$;

-- Operators who must remove a live record by hand can do so in a transaction with
-- SET LOCAL session_replication_role = replica, which skips this trigger.
-- Created only when absent (CREATE OR REPLACE TRIGGER needs PostgreSQL 14, and dropping it
-- to create it again would lock the table against reads and writes on every run); its
-- definition has not changed since the first version.
DO $migrate$
BEGIN
  IF NOT EXISTS (
    SELECT FROM pg_trigger
    WHERE tgrelid = 'idempotency_keys'::regclass AND tgname = 'idempotency_keys_guard_transition'
  ) THEN
    CREATE TRIGGER idempotency_keys_guard_transition
    BEFORE INSERT OR UPDATE OR DELETE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION idempotency_keys_guard_transition();
  END IF;
END
$migrate$;

COMMIT;
`;

/**
 * The advisory lock the SQL takes for its transaction. `migrate` holds it for its whole
 * session, so that it reads what was there before and after without another applier in
 * between (a session may take a lock it holds again).
 */
export const SCHEMA_LOCK_KEY = /pg_advisory_xact_lock\((\d+)\)/.exec(IDEMPOTENCY_SCHEMA_SQL)![1];
