import type { MigrationInterface, QueryRunner } from 'typeorm';

/** The sample app's own tables: one row per executed payment or e-mail. */
export class CreateSampleTables1764288000001 implements MigrationInterface {
  name = 'CreateSampleTables1764288000001';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE payments (
        id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id    text        NOT NULL,
        amount     bigint      NOT NULL CHECK (amount > 0),
        currency   char(3)     NOT NULL,
        card_last4 text,
        status     text        NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    await queryRunner.query(`CREATE INDEX payments_user_id_idx ON payments (user_id)`);
    await queryRunner.query(`
      CREATE TABLE emails (
        id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id    text        NOT NULL,
        to_address text        NOT NULL,
        subject    text        NOT NULL,
        status     text        NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    await queryRunner.query(`CREATE INDEX emails_user_id_idx ON emails (user_id)`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE emails`);
    await queryRunner.query(`DROP TABLE payments`);
  }
}
