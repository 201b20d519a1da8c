/** Metadata key under which `@IdempotentMethod()` records its options on the method it wraps. */
export const METHOD_METADATA = 'nestjs-idempotency:method-options';
