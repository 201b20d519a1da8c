import type { Generated } from 'kysely';

export interface Tables {
  payments: { id: Generated<string>; reference: string; amount: number; created_at: Generated<Date> };
  receipts: { id: Generated<string>; email: string; reference: string };
}

/** The application's own tables; the idempotency schema comes from the library's `migrate`. */
export const APP_SCHEMA = `
  CREATE TABLE payments (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    reference  text        NOT NULL,
    amount     integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE receipts (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email     text NOT NULL,
    reference text NOT NULL
  )`;
