// Type declarations for roomcast.js (see docs/protocol.md for every field).

export interface LoginOk {
  user_id: string;
  heartbeat_s: number;
  name?: string;
}

export interface RoomMsg {
  room_id: string;
  /** Time-ordered id, as a decimal string (64-bit). */
  msg_id: string;
  /** Increases by one per message within an epoch. */
  seq: number;
  epoch: number;
  user_id: string;
  name?: string;
  text: string;
  kind: "chat" | "gift" | "like" | "follow" | "system" | "admin";
  /** Milliseconds since the Unix epoch, when ingest accepted it. */
  ts: number;
  /** Structured extra data (gifts), when the sender attached some. */
  payload?: unknown;
  /** Set when the message filled a gap after a reconnect. */
  replayed?: true;
}

export interface JoinOk {
  room_id: string;
  online: number;
  epoch: number;
  recovered?: boolean;
  history: RoomMsg[];
  last_seq?: number;
}

export interface Online {
  room_id: string;
  count: number;
}

export interface Critical {
  msg_id: string;
  kind: string;
  room_id?: string;
  text?: string;
  payload?: unknown;
  ts: number;
}

export interface ErrorBody {
  code: string;
  message: string;
  retry_after_ms?: number;
  op?: string;
  room_id?: string;
}

export class RoomcastError extends Error {
  code: string;
  body: ErrorBody;
  retryAfterMs?: number;
}

export interface ClientOptions {
  token?: string;
  getToken?: () => string | Promise<string>;
  requestTimeoutMs?: number;
  reconnect?: boolean;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  history?: number;
  WebSocket?: typeof WebSocket;
}

export interface ClientEvents {
  open: CustomEvent<LoginOk>;
  message: CustomEvent<RoomMsg>;
  online: CustomEvent<Online>;
  critical: CustomEvent<Critical>;
  joined: CustomEvent<JoinOk>;
  gap: CustomEvent<{ room_id: string; epoch: number }>;
  servererror: CustomEvent<ErrorBody>;
  kicked: CustomEvent<{ code: string; reason: string; reconnect?: string[] }>;
  reconnecting: CustomEvent<{ attempt: number; delay_ms: number; reason: string }>;
  close: CustomEvent<{ code: number; reason: string; willReconnect: boolean }>;
}

export class RoomcastClient extends EventTarget {
  constructor(url: string, opts?: ClientOptions);
  readonly connected: boolean;
  connect(): Promise<LoginOk>;
  close(): void;
  /** Leaves every room, ends the session on the server (logout_ok, close 1000); no reconnect. */
  logout(): Promise<void>;
  join(roomId: string, opts?: { history?: number }): Promise<JoinOk>;
  leave(roomId: string): Promise<{ room_id: string }>;
  chat(roomId: string, text: string): Promise<{ msg_id: string }>;
  addEventListener<K extends keyof ClientEvents>(
    type: K,
    listener: (ev: ClientEvents[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
}
