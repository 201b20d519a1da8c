import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Creates `idempotency_settings`, which keeps what every instance of an application must
 * share: today the secret that request fingerprints are MACed with, created at random by
 * the first instance that starts (unless the application passes `fingerprintSecret`).
 */
export class CreateIdempotencySettings1780000000000 implements MigrationInterface {
  name = 'CreateIdempotencySettings1780000000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE idempotency_settings (
        name       text        NOT NULL,
        value      text        NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT idempotency_settings_pkey PRIMARY KEY (name)
      )`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE idempotency_settings`);
  }
}
