import { register } from 'node:module';

/**
 * Makes TypeORM and `@nestjs/typeorm` unloadable in this process (and `pg`, unless
 * `allowPg`), and proves it: import the application after this, dynamically, and it
 * starts only if nothing on its way loads them. Prints `typeorm cannot load`.
 */
export async function forbidTypeorm(data: { allowPg?: boolean } = {}): Promise<void> {
  register('./forbid-typeorm.js', { parentURL: import.meta.url, data });
  const blocked = await import('typeorm').then(
    () => false,
    () => true,
  );
  if (!blocked) throw new Error('the forbid-typeorm hooks are not in force');
  console.log('typeorm cannot load');
}
