/**
 * Module resolution hooks (`module.register`) that refuse TypeORM, `@nestjs/typeorm` and
 * `pg`: a process that loads any of them fails, naming it and who imported it. Registered
 * with `data: { allowPg: true }`, `pg` loads (an application on a plain pool).
 */
let forbidden = /^(typeorm|@nestjs\/typeorm|pg)(\/|$)/;

interface ResolveContext {
  parentURL?: string;
}

export function initialize(data?: { allowPg?: boolean }): void {
  if (data?.allowPg) forbidden = /^(typeorm|@nestjs\/typeorm)(\/|$)/;
}

export async function resolve(
  specifier: string,
  context: ResolveContext,
  next: (specifier: string, context: ResolveContext) => Promise<unknown>,
): Promise<unknown> {
  if (forbidden.test(specifier)) throw new Error(`forbidden module "${specifier}" imported by ${context.parentURL}`);
  return next(specifier, context);
}
