/**
 * Module resolution hooks (`module.register`) that refuse TypeORM, `@nestjs/typeorm` and
 * `pg`: a process that loads any of them fails, naming it and who imported it.
 */
const FORBIDDEN = /^(typeorm|@nestjs\/typeorm|pg)(\/|$)/;

interface ResolveContext {
  parentURL?: string;
}

export async function resolve(
  specifier: string,
  context: ResolveContext,
  next: (specifier: string, context: ResolveContext) => Promise<unknown>,
): Promise<unknown> {
  if (FORBIDDEN.test(specifier)) throw new Error(`forbidden module "${specifier}" imported by ${context.parentURL}`);
  return next(specifier, context);
}
