/**
 * Whether PostgreSQL text (and JSONB strings) can hold `text` exactly: they hold no NUL,
 * and the driver turns a lone surrogate into U+FFFD, so that "caf\ud800" and "caf\ufffd"
 * would become one value.
 */
export function isStorableText(text: string): boolean {
  return !text.includes('\0') && text.isWellFormed();
}
