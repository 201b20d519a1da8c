/*
 * Values written into SQL text, for the few statements that must travel as one simple
 * query (several statements in one round trip), where the protocol takes no parameters.
 */

/**
 * A value as an SQL literal. Strings are quoted with quotes doubled, and with backslashes
 * doubled in the E'' form, which reads the same whatever standard_conforming_strings says.
 * A NUL would end the query text early on the server: it is refused (PostgreSQL text
 * cannot hold one anyway).
 */
export function literal(value: unknown): string {
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new RangeError(`not a finite number: ${value}`);
    return `(${value})`;
  }
  if (typeof value !== 'string') throw new TypeError(`no SQL literal for a ${typeof value}`);
  if (value.includes('\0')) throw new RangeError('an SQL literal cannot contain a NUL character');
  const quoted = value.replaceAll("'", "''");
  return value.includes('\\') ? `E'${quoted.replaceAll('\\', '\\\\')}'` : `'${quoted}'`;
}

/** Statements split at their placeholders, once each: they are a handful of constants. */
const templates = new Map<string, { texts: string[]; slots: number[] }>();

/** A parameterised statement (one of the store's constants) with its $n placeholders replaced by the values' literals. */
export function inline(sql: string, values: readonly unknown[]): string {
  let template = templates.get(sql);
  if (!template) {
    const pieces = sql.split(/\$(\d+)/);
    template = {
      texts: pieces.filter((_, i) => i % 2 === 0),
      slots: pieces.filter((_, i) => i % 2 === 1).map((n) => Number(n) - 1),
    };
    templates.set(sql, template);
  }
  let text = template.texts[0];
  for (const [i, slot] of template.slots.entries()) {
    if (slot >= values.length) throw new RangeError(`no value for $${slot + 1}`);
    text += literal(values[slot]) + template.texts[i + 1];
  }
  return text;
}
