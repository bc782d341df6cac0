// Types for agentwire.js, the browser client for the agentwire WebSocket protocol (v1).
// The guide, with every event, state and reason explained, is docs/client.md.

/** The six agent event types. */
export type AgentEventType =
  | 'agent_started'
  | 'agent_thinking'
  | 'tool_executing'
  | 'tool_completed'
  | 'agent_completed'
  | 'agent_error';

/** One agent event, as the server sent it. */
export interface AgentEvent {
  type: AgentEventType;
  /** The user's sequence number: no gaps and no repeats within an epoch. */
  seq: number;
  epoch: string;
  thread_id: string;
  run_id: string;
  agent_name: string;
  /** RFC 3339 UTC with microseconds: when the application emitted the event. */
  timestamp: string;
  /** On tool_executing and tool_completed only. */
  tool_name?: string;
  data: AgentEventData;
}

/** The payload of each event type (docs/protocol.md, section 3.2). */
export interface AgentEventData {
  /** agent_started: the request that started the run, and its frame's ref. */
  user_request?: string;
  ref?: string | number;
  /** agent_thinking */
  text?: string;
  /** tool_executing and tool_completed */
  tool_call_id?: string;
  args?: unknown;
  status?: 'ok' | 'error';
  result?: unknown;
  error?: string;
  /** tool_completed and agent_completed */
  duration_ms?: number;
  /** agent_completed */
  answer?: string;
  /** agent_error */
  code?: 'failed' | 'cancelled' | 'dropped' | 'panicked' | string;
  message?: string;
}

/** The server's `welcome` frame. */
export interface Welcome {
  type: 'welcome';
  session_id: number;
  user_id: string;
  epoch: string;
  seq: number;
  heartbeat_interval_ms: number;
  protocol: number;
}

/** Any parsed frame from the server. */
export interface ServerFrame {
  type: string;
  [field: string]: unknown;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Why the client is in its state (docs/client.md lists what each means). */
export type StateReason =
  // idle and open
  | 'idle' | 'connected'
  // connecting
  | 'initial' | 'reconnect' | 'manual' | 'online' | 'visible' | 'token_refresh'
  // reconnecting, and closed when a new socket cannot help
  | 'network' | 'unreachable' | 'offline' | 'token_failed' | 'closed' | 'going_away'
  | 'protocol_error' | 'unsupported_data' | 'policy' | 'message_too_big' | 'server_error'
  | 'server_restart' | 'server_full' | 'heartbeat' | 'slow_consumer' | 'token_expired'
  | 'too_many_tabs' | 'rate_limited'
  // closed only
  | 'client' | 'socket_error';

export interface StateInfo {
  state: ConnectionState;
  previous: ConnectionState | null;
  reason: StateReason;
  /** A sentence for people, for a status line. */
  message: string;
  /** The close code behind the state, when there was one. */
  code?: number;
  /** The reason text the server gave with its close frame. */
  serverReason?: string;
  /** connecting and reconnecting: the attempt number since the last stable connection. */
  attempt?: number;
  /** reconnecting: milliseconds until the next attempt, and when that is (Date.now() based). */
  delay?: number;
  retryAt?: number;
  /** open: the welcome frame. */
  welcome?: Welcome;
  /** token_failed, unreachable or offline after getToken threw: what it threw. */
  error?: unknown;
}

export type RunStatus = 'running' | 'completed' | 'failed' | 'stopped' | 'interrupted';

/** What the client knows of one run (a copy: changing it changes nothing). */
export interface RunInfo {
  runId: string;
  threadId: string;
  agentName: string;
  status: RunStatus;
  /** From agent_started, when this client saw it. */
  request: string | null;
  ref: string | number | null;
  /** For a failed or stopped run: agent_error's code and message. */
  error: { code: string; message: string } | null;
  /** The seq of the run's latest event seen. */
  lastSeq: number;
}

export type ResyncReason = 'server_restart' | 'new_epoch' | 'events_expired' | 'actor_restart';

export interface ResyncInfo {
  /** The position the client adopted. */
  epoch: string;
  seq: number;
  reason: ResyncReason;
  message: string;
  /** How many events this tab will never receive, when known. */
  missed: number | null;
  /** The runs that were running and are now `interrupted`. */
  interrupted: string[];
}

export interface ResumedInfo {
  /** The first replayed seq (above the client's position + 1 when older events were gone). */
  fromSeq: number;
  toSeq: number;
  /** How many events the replay delivered. */
  replayed: number;
  /** This replay rebuilt a new page from the server's buffer (the `history` option). */
  history: boolean;
}

export interface GapInfo {
  epoch: string;
  expected: number;
  got: number;
  missed: number;
}

export interface ServerError {
  code: string;
  message: string;
  ref?: string | number;
}

export interface ClientEventMap {
  state: (info: StateInfo) => void;
  event: (event: AgentEvent) => void;
  run: (run: RunInfo, previous: RunStatus | null) => void;
  resumed: (info: ResumedInfo) => void;
  resync: (info: ResyncInfo) => void;
  gap: (info: GapInfo) => void;
  error: (error: ServerError) => void;
  frame: (frame: ServerFrame) => void;
  sent: (frame: object) => void;
}

export type ClientEventName = keyof ClientEventMap;

/** What getToken may give: a token, or a token and when it expires. */
export type TokenResult = string | { token: string; expiresAt?: number | Date | null };

export interface TokenRequest {
  /** initial: there is none yet; refresh: before expiry, or after a refused upgrade; expired: after close 4002. */
  reason: 'initial' | 'refresh' | 'expired';
}

/** A synchronous key-value store with sessionStorage's three methods. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ClientOptions {
  /** ws:// or wss:// URL, or a path or http(s) URL of this page's server (`/ws`). */
  url: string;
  token?: string;
  getToken?: (request: TokenRequest) => TokenResult | Promise<TokenResult>;
  /** On the first connect, replay every event the server still holds for the user. Default false. */
  history?: boolean;
  /** Keep the token in storage so a reload need not ask for one. Default false. */
  persistToken?: boolean;
  /** 'session' (the default: sessionStorage), null or false for none, or your own store. */
  storage?: 'session' | StorageLike | null | false;
  /** Default 'agentwire:' + the WebSocket URL. */
  storageKey?: string;
  /** Full-jitter backoff: attempt n waits up to min(backoffMaxMs, backoffBaseMs * 2^n). Defaults 500 and 5000. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Refresh a token this long before it expires (or halfway through a shorter life). Default 30000. */
  tokenRefreshMarginMs?: number;
  /** Detect a silent server with app-level pings. Default true. */
  heartbeat?: boolean;
  /** How many runs to remember. Default 500. */
  maxRuns?: number;
  /** A WebSocket constructor, where there is no global one. */
  WebSocket?: { new (url: string, protocols?: string | string[]): WebSocket };
}

export interface RefOption {
  ref?: string | number;
}

export declare const EVENT_TYPES: readonly AgentEventType[];
export declare const CLIENT_EVENTS: readonly ClientEventName[];

export declare class AgentwireClient {
  constructor(options: ClientOptions);

  static readonly EVENT_TYPES: readonly AgentEventType[];
  static readonly CLIENT_EVENTS: readonly ClientEventName[];

  on<K extends ClientEventName>(name: K, handler: ClientEventMap[K]): () => void;
  off<K extends ClientEventName>(name: K, handler: ClientEventMap[K]): void;

  connect(): void;
  close(code?: number, reason?: string): void;
  reconnectNow(): boolean;
  forget(): void;

  send(frame: object): boolean;
  startAgent(userRequest: string, options?: RefOption & { threadId?: string; context?: Record<string, unknown> }): boolean;
  userMessage(content: string, threadId: string, options?: RefOption): boolean;
  stopAgent(runId: string, options?: RefOption): boolean;
  switchThread(threadId: string | null, options?: RefOption): boolean;
  ping(options?: RefOption): boolean;

  readonly runs: RunInfo[];
  run(runId: string): RunInfo | undefined;

  readonly state: ConnectionState;
  readonly stateInfo: StateInfo;
  readonly epoch: string | null;
  readonly lastSeq: number | null;
  readonly sessionId: number | null;
  readonly userId: string | null;
  readonly heartbeatIntervalMs: number | null;
  readonly wantedThread: string | null;
  readonly threadFilter: string | null;
  readonly token: string | null;
  readonly tokenExpiresAt: number | null;

  url: string;
  getToken: ClientOptions['getToken'] | null;
  history: boolean;
  persistToken: boolean;
  heartbeat: boolean;
  backoffBaseMs: number;
  backoffMaxMs: number;
  tokenRefreshMarginMs: number;
  maxRuns: number;
  storage: StorageLike | null;
  storageKey: string;
}

export default AgentwireClient;
