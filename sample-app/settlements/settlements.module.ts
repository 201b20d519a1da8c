import { BullModule } from '@nestjs/bullmq';
import { type DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { SettlementsConfig } from '../config.js';
import { Settlement } from './settlement.entity.js';
import { SETTLEMENT_QUEUE } from './settlement-job.js';
import { SettlementProcessor } from './settlement.processor.js';
import { SettlementScheduler } from './settlement.scheduler.js';

/** A scheduled settlement per tick, across instances, through a BullMQ queue on Redis. */
@Module({})
export class SettlementsModule {
  static forRoot(config: SettlementsConfig): DynamicModule {
    return {
      module: SettlementsModule,
      imports: [
        ScheduleModule.forRoot(),
        BullModule.forRoot({ connection: { url: config.redisUrl }, prefix: config.prefix }),
        BullModule.registerQueue({ name: SETTLEMENT_QUEUE }),
        TypeOrmModule.forFeature([Settlement]),
      ],
      providers: [SettlementScheduler, SettlementProcessor],
    };
  }
}
