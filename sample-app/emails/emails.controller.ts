import { Body, Controller, HttpCode, Inject, Injectable, type PipeTransform, Post, UseGuards } from '@nestjs/common';
import { InjectRepository } from '@nestjs/typeorm';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Repository } from 'typeorm';
import { Idempotent } from '../../lib/index.js';
import { CallerGuard, CallerId } from '../caller.guard.js';
import { SAMPLE_CONFIG, type SampleConfig } from '../config.js';
import { InvalidBodyException, objectBody } from '../validation.js';
import { Email } from './email.entity.js';

export interface SendEmail {
  to: string;
  subject: string;
}

/** Deliberately simple: one @, no spaces, a dot in the domain. */
const EMAIL_ADDRESS = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

@Injectable()
export class SendEmailPipe implements PipeTransform<unknown, SendEmail> {
  transform(value: unknown): SendEmail {
    const { to, subject } = objectBody(value);
    const errors: string[] = [];
    if (typeof to !== 'string' || to.length > 320 || !EMAIL_ADDRESS.test(to))
      errors.push('to must be an e-mail address');
    if (typeof subject !== 'string' || subject.length > 998)
      errors.push('subject must be a string of at most 998 characters');
    if (errors.length) throw new InvalidBodyException(errors);
    return { to: to as string, subject: subject as string };
  }
}

@Controller('emails')
@UseGuards(CallerGuard)
export class EmailsController {
  constructor(
    @InjectRepository(Email) private readonly emails: Repository<Email>,
    @Inject(SAMPLE_CONFIG) private readonly config: SampleConfig,
  ) {}

  /** A duplicate arriving while the first is still queuing gets 409 at once. */
  @Post()
  @HttpCode(202)
  @Idempotent({ concurrency: 'reject' })
  async send(@CallerId() userId: string, @Body(SendEmailPipe) body: SendEmail) {
    const email = await this.emails.save(this.emails.create({ userId, ...body, status: 'queued' }));
    if (this.config.providerLatencyMs > 0) await sleep(this.config.providerLatencyMs);
    return { id: email.id, status: email.status };
  }
}
