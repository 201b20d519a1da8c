import { integer, pgTable, text, timestamp, uuid } from 'drizzle-orm/pg-core';

export const payments = pgTable('payments', {
  id: uuid('id').primaryKey().defaultRandom(),
  reference: text('reference').notNull(),
  amount: integer('amount').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

export const receipts = pgTable('receipts', {
  id: uuid('id').primaryKey().defaultRandom(),
  email: text('email').notNull(),
  reference: text('reference').notNull(),
});

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
