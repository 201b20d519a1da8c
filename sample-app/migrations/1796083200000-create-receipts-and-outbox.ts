import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Tables of the payment events (used only when RABBITMQ_URL is set): the outbox that a
 * payment's event is written to in the payment's own transaction, and the receipts that
 * the consumer of those events writes.
 */
export class CreateReceiptsAndOutbox1796083200000 implements MigrationInterface {
  name = 'CreateReceiptsAndOutbox1796083200000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE outbox (
        id         bigserial   PRIMARY KEY,
        pattern    text        NOT NULL,
        message_id text        NOT NULL,
        payload    jsonb       NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    // The idempotency record is what makes the consumer write one receipt per payment;
    // the unique constraint is a second line of defence, not the mechanism.
    await queryRunner.query(`
      CREATE TABLE receipts (
        id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        payment_id uuid        NOT NULL UNIQUE,
        user_id    text        NOT NULL,
        amount     bigint      NOT NULL,
        currency   char(3)     NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE receipts`);
    await queryRunner.query(`DROP TABLE outbox`);
  }
}
