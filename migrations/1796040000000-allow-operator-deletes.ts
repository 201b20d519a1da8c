import type { MigrationInterface, QueryRunner } from 'typeorm';

/** The transaction-local setting that marks a DELETE as an operator's (see `lib/storage/postgres/operator.ts`). */
export const OPERATOR_DELETE_SETTING = 'idempotency.operator_delete';

/**
 * Lets an operator delete a completed, unexpired record (`IdempotencyService.deleteRecord()`,
 * the CLI's `delete`) without a superuser: the transition trigger now accepts that DELETE
 * when the statement sets `idempotency.operator_delete` to `on` for its own transaction.
 * Any role with DELETE on the table may set it; the trigger guards against code that
 * breaks the state machine by mistake, not against a role that means to delete. Every
 * other transition is refused as before. The function is replaced in place, so the
 * trigger of `CreateIdempotencyKeys1764288000000` keeps calling it.
 */
export class AllowOperatorDeletes1796040000000 implements MigrationInterface {
  name = 'AllowOperatorDeletes1796040000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(guardFunction(true));
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(guardFunction(false));
  }
}

/** The guard as `CreateIdempotencyKeys1764288000000` wrote it, with or without the operator's DELETE. */
function guardFunction(operatorDeletes: boolean): string {
  const completedDeleteRefused = operatorDeletes
    ? `OLD.status = 'completed' AND NOT expired
             AND current_setting('${OPERATOR_DELETE_SETTING}', true) IS DISTINCT FROM 'on'`
    : `OLD.status = 'completed' AND NOT expired`;
  return `
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
          IF ${completedDeleteRefused} THEN
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
      END $$`;
}
