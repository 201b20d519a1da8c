import { BadRequestException, type PipeTransform } from '@nestjs/common';

/** Rejects a body whose `field` is not a positive integer, before the handler runs. */
export class PositiveIntegerField implements PipeTransform {
  constructor(private readonly field: string) {}

  transform(body: Record<string, unknown>) {
    const value = body?.[this.field];
    if (!Number.isInteger(value) || (value as number) < 1) {
      throw new BadRequestException(`${this.field} must be a positive integer`);
    }
    return body;
  }
}
