import net from 'node:net';

/**
 * A TCP proxy between an app and PostgreSQL, so that tests can cut the app's database
 * connections at chosen moments without touching the shared server: `cut()` drops every
 * open connection (as a failover or a network fault would), `down()` also refuses new
 * ones until `up()`.
 */
export class TcpProxy {
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private readonly silenced = new WeakSet<[net.Socket, net.Socket]>();
  private refusing = false;
  private loseReplyTo?: Buffer;
  /** Connections dropped by cut() and down(), over the proxy's life. */
  cutCount = 0;

  private constructor(
    private readonly server: net.Server,
    private readonly target: { host: string; port: number },
  ) {
    server.on('connection', (client) => this.accept(client));
  }

  static async start(targetUrl: string): Promise<TcpProxy> {
    const url = new URL(targetUrl);
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new TcpProxy(server, { host: url.hostname, port: Number(url.port || 5432) });
  }

  /** `databaseUrl` with its host and port replaced by the proxy's. */
  url(databaseUrl: string): string {
    const url = new URL(databaseUrl);
    url.hostname = '127.0.0.1';
    url.port = String((this.server.address() as net.AddressInfo).port);
    return url.toString();
  }

  get open(): number {
    return this.pairs.size;
  }

  cut(): number {
    const dropped = this.pairs.size;
    for (const [client, upstream] of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
    this.cutCount += dropped;
    return dropped;
  }

  down(): number {
    this.refusing = true;
    return this.cut();
  }

  up(): void {
    this.refusing = false;
  }

  /**
   * The next connection that sends a message containing `text` (e.g. COMMIT) has it
   * delivered to the server, but the server's reply is lost and the connection dropped:
   * the client cannot know whether the statement took effect.
   */
  loseNextReplyTo(text: string): void {
    this.loseReplyTo = Buffer.from(text);
  }

  /**
   * Every open connection stops carrying data, both ways, without being closed: a network
   * partition that drops packets, as both ends see it (a query sent on it never returns).
   * Connections opened afterwards work.
   */
  silence(): number {
    for (const pair of this.pairs) this.silenced.add(pair);
    return this.pairs.size;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    if (this.refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target.port, this.target.host);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    let doomed = false;
    client.on('data', (chunk: Buffer) => {
      if (this.silenced.has(pair)) return;
      if (this.loseReplyTo && chunk.includes(this.loseReplyTo)) {
        this.loseReplyTo = undefined;
        doomed = true;
        this.cutCount++;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (this.silenced.has(pair)) return;
      if (doomed) drop();
      else client.write(chunk);
    });
  }
}
