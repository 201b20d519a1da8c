import type { MigrationInterface, QueryRunner } from 'typeorm';

/** One row per settlement tick (used only when REDIS_URL is set). */
export class CreateSettlements1796083200001 implements MigrationInterface {
  name = 'CreateSettlements1796083200001';

  async up(queryRunner: QueryRunner): Promise<void> {
    // As for receipts: the idempotency records keep it to one row per tick; the unique
    // constraint is a second line of defence.
    await queryRunner.query(`
      CREATE TABLE settlements (
        id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        tick          timestamptz NOT NULL UNIQUE,
        job_id        text        NOT NULL,
        payment_count integer     NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now()
      )`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE settlements`);
  }
}
