import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn } from 'typeorm';

/** The settlement of one tick: the payments made in the interval before it. */
@Entity('settlements')
export class Settlement {
  @PrimaryGeneratedColumn('uuid')
  id!: string;

  @Column({ type: 'timestamptz' })
  tick!: Date;

  @Column({ name: 'job_id', type: 'text' })
  jobId!: string;

  @Column({ name: 'payment_count', type: 'integer' })
  paymentCount!: number;

  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' })
  createdAt!: Date;
}
