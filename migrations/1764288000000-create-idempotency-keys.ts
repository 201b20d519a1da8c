import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Creates `idempotency_keys`. The state machine of `lib/record.ts` is enforced here too:
 * CHECK constraints say what each status must carry, and a trigger refuses every
 * transition the machine does not have, whatever code issues the UPDATE.
 */
export class CreateIdempotencyKeys1764288000000 implements MigrationInterface {
  name = 'CreateIdempotencyKeys1764288000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE idempotency_keys (
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
      )`);
    // Purging scans expired rows in expiry order through this index, never the table.
    await queryRunner.query(`CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at)`);
    // The trigger compares against statement_timestamp(), as the store's SQL does: now()
    // is the transaction start, which can lie before a row-lock wait.
    await queryRunner.query(`
      CREATE FUNCTION idempotency_keys_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
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
          IF OLD.status = 'completed' AND NOT expired THEN
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
      END $$`);
    // Operators who must remove a live record by hand can do so in a transaction with
    // SET LOCAL session_replication_role = replica, which skips this trigger.
    await queryRunner.query(`
      CREATE TRIGGER idempotency_keys_guard_transition
      BEFORE INSERT OR UPDATE OR DELETE ON idempotency_keys
      FOR EACH ROW EXECUTE FUNCTION idempotency_keys_guard_transition()`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE idempotency_keys`);
    await queryRunner.query(`DROP FUNCTION idempotency_keys_guard_transition()`);
  }
}
