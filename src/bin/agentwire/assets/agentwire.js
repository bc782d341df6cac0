/*
 * agentwire.js: the browser client for the agentwire WebSocket protocol (version 1).
 *
 * One dependency-free ES module (ES2020), no build step; its types are in agentwire.d.ts
 * and its guide in docs/client.md. It connects with the token in the `jwt.<token>`
 * subprotocol; keeps the tab's position ({epoch, lastSeq}) in sessionStorage so that a
 * reload resumes where the tab was; delivers each agent event once and in order; tracks
 * runs and says which were interrupted; refreshes the token through the app's callback
 * before it expires; and reconnects with full-jitter backoff, at once after a drain (1012),
 * on the browser's `online` event, when the tab becomes visible, or on reconnectNow().
 *
 *   import { AgentwireClient } from '/agentwire.js';
 *   const client = new AgentwireClient({ url: '/ws', getToken: () => api.wsToken() });
 *   client.on('event', (ev) => render(ev));
 *   client.on('state', (s) => showStatus(s.state, s.message));
 *   client.connect();
 */

/** The six agent event types. */
export const EVENT_TYPES = Object.freeze(['agent_started', 'agent_thinking', 'tool_executing',
  'tool_completed', 'agent_completed', 'agent_error']);
/** The names `on()` accepts. */
export const CLIENT_EVENTS = Object.freeze(['state', 'event', 'run', 'resumed', 'resync', 'gap',
  'error', 'frame', 'sent']);

const STABLE_AFTER_MS = 10000;      // a socket open this long resets the backoff
const ERROR_CLOSE_GRACE_MS = 1000;  // how long to wait for `close` after `error`
const SAVE_DELAY_MS = 200;          // position writes to storage are batched this long
const PROBE_MS = 4000;              // a woken tab's ping must be answered within this
const MAX_TIMER_MS = 2147483647;    // setTimeout's limit

// Every close code: [reason, what it means to a person, whether a new socket can help].
const CLOSES = {
  1000: ['closed', 'the connection was closed', true],
  1001: ['going_away', 'the server went away', true],
  1002: ['protocol_error', 'the server refused a malformed frame from this client', false],
  1003: ['unsupported_data', 'the server refused binary data from this client', false],
  1006: ['network', 'the connection was lost', true],
  1008: ['policy', 'the server closed the connection: this client broke its rules', false],
  1009: ['message_too_big', 'a message from this tab was too big for the server', true],
  1011: ['server_error', 'the server reset this session after repeated internal errors', true],
  1012: ['server_restart', 'the server is restarting', true],
  1013: ['server_full', 'the server is full', true],
  4000: ['heartbeat', 'the server stopped hearing from this tab', true],
  4001: ['slow_consumer', 'this tab fell too far behind the events', true],
  4002: ['token_expired', 'the sign-in token expired', true],
  4003: ['too_many_tabs', 'this user has too many connections open: close another tab, then reconnect', false],
  4008: ['rate_limited', 'this tab sent too many messages', true],
};
const CONNECTING = { initial: 'connecting', reconnect: 'reconnecting', manual: 'reconnecting now',
  online: 'back online: reconnecting', visible: 'tab visible again: reconnecting',
  token_refresh: 'renewing the sign-in token' };

function resyncMessage(reason, missed) {
  const n = missed === 1 ? '1 event' : missed + ' events';
  switch (reason) {
    case 'server_restart': return 'the server restarted: runs in progress were interrupted';
    case 'new_epoch': return 'the server no longer had this tab\'s events (it restarted, or the tab was away too long)';
    case 'events_expired': return missed > 0 ? n + ' could no longer be replayed' : 'some events could no longer be replayed';
    case 'actor_restart': return 'the server restarted this user\'s session after an internal error; '
      + (missed > 0 ? n + ' were missed' : 'no events were missed');
    default: return 'the event stream restarted';
  }
}

function tokenFailure(err) {
  if (typeof navigator !== 'undefined' && navigator.onLine === false) return ['offline', 'the browser is offline'];
  if (err instanceof TypeError && /fetch|network|load/i.test(err.message)) return ['unreachable', 'cannot reach the server'];
  const detail = err && err.message ? ': ' + err.message : '';
  return ['token_failed', 'could not get a sign-in token' + detail];
}

/** The `exp` of a JWT, in milliseconds since the Unix epoch, or null. */
function jwtExpiry(token) {
  const part = typeof token === 'string' ? token.split('.')[1] : null;
  if (!part) return null;
  try {
    const claims = JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/')));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch (err) { return null; }
}

function defaultStorage() {
  try { return typeof sessionStorage !== 'undefined' ? sessionStorage : null; } catch (err) { return null; }
}

function absoluteUrl(url) {
  if (typeof location === 'undefined' || /^wss?:/i.test(url)) return url;
  const u = new URL(url, location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

function withRef(frame, opts) {
  if (opts && opts.ref != null) frame.ref = opts.ref;
  return frame;
}

export class AgentwireClient {
  constructor(options) {
    const o = options || {};
    if (!o.url) throw new Error('AgentwireClient: `url` is required');
    this.url = absoluteUrl(o.url);
    this.getToken = o.getToken || null;
    this.history = !!o.history;
    this.persistToken = !!o.persistToken;
    this.heartbeat = o.heartbeat !== false;
    this.backoffBaseMs = o.backoffBaseMs ?? 500;
    this.backoffMaxMs = o.backoffMaxMs ?? 5000;
    this.tokenRefreshMarginMs = o.tokenRefreshMarginMs ?? 30000;
    this.maxRuns = o.maxRuns ?? 500;
    this.WebSocketImpl = o.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
    this.storage = o.storage === undefined || o.storage === 'session' ? defaultStorage() : (o.storage || null);
    this.storageKey = o.storageKey || 'agentwire:' + this.url;

    this.state = 'idle';
    this.stateInfo = { state: 'idle', previous: null, reason: 'idle', message: 'not connected' };
    this.epoch = null;
    this.lastSeq = null;
    this.sessionId = null;
    this.userId = null;
    this.heartbeatIntervalMs = null;
    this.wantedThread = null;  // asked for with switchThread(), re-applied on every socket
    this.threadFilter = null;  // confirmed by the server on the current socket
    this.token = null;
    this.tokenExpiresAt = null;

    this._handlers = new Map();
    this._runs = new Map();
    this._ws = null;
    this._welcomed = false;
    this._started = false;     // a welcome arrived once: the saved position was used
    this._gen = 0;             // bumped by each attempt and by close(): older awaits are stale
    this._attempt = 0;
    this._openedAt = 0;
    this._lastRx = 0;
    this._lastClose = null;
    this._drained = false;     // a 1012 closed a socket since the last welcome
    this._tokenStale = false;  // the next attempt fetches a fresh token first
    this._refreshAt = null;
    this._timers = { retry: null, beat: null, refresh: null, save: null, probe: null };
    this._resuming = null;     // a `resume` awaits its answer: {history}
    this._replayed = 0;
    this._lossBase = null;     // the seq up to which the app has every event (null: nothing to lose)
    this._reapply = false;     // re-send wantedThread once the resume is answered
    this._onlyThread = null;   // until the re-applied filter is confirmed, deliver only this thread
    this._skipped = false;     // seqs since lastSeq may have been filtered out: a jump is no gap
    this._listening = false;
    this._onOnline = () => this._wake('online');
    this._onVisible = () => { if (typeof document === 'undefined' || document.visibilityState === 'visible') this._wake('visible'); };
    this._onPageHide = () => this._save(true);

    const saved = this._load();
    this._saved = saved && typeof saved.epoch === 'string' && Number.isSafeInteger(saved.seq) ? saved : null;
    if (o.token) this._takeToken(o.token);
    else if (this.persistToken && saved && typeof saved.token === 'string'
      && !(saved.exp && saved.exp <= Date.now())) this._takeToken({ token: saved.token, expiresAt: saved.exp || null });
  }

  // ---- public API ----

  /** Subscribes to one of CLIENT_EVENTS; returns a function that unsubscribes. */
  on(name, fn) {
    if (!CLIENT_EVENTS.includes(name)) throw new Error('AgentwireClient: unknown event `' + name + '`');
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const set = this._handlers.get(name);
    if (set) set.delete(fn);
  }

  /** Opens the connection (no-op unless idle or closed). */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed') return;
    this._attempt = 0;
    this._listen(true);
    this._open('initial');
  }

  /** Closes for good: no reconnect until connect() is called again. */
  close(code, reason) {
    this._gen += 1;
    const ws = this._ws;
    this._detach();
    this._clearTimers();
    this._listen(false);
    this._save(true);
    if (ws && ws.readyState < 2) ws.close(code || 1000, reason || 'client closed');
    this._setState('closed', { reason: 'client', message: 'disconnected', code: code || 1000 });
  }

  /** Tries at once when waiting to reconnect; returns whether it did. */
  reconnectNow() {
    return this._wake('manual');
  }

  /** Forgets this tab's saved position and token (for example on logout). */
  forget() {
    clearTimeout(this._timers.save);
    this._timers.save = null;
    if (this.storage) try { this.storage.removeItem(this.storageKey); } catch (err) { /* storage off */ }
    this._saved = null;
  }

  /** Sends one frame; false (sending nothing) unless the socket is open and welcomed. */
  send(frame) {
    const ws = this._ws;
    if (!ws || !this._welcomed || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    this._emit('sent', frame);
    return true;
  }

  startAgent(userRequest, opts) {
    const o = opts || {};
    const frame = { type: 'start_agent', user_request: String(userRequest) };
    if (o.threadId != null) frame.thread_id = o.threadId;
    if (o.context != null) frame.context = o.context;
    return this.send(withRef(frame, o));
  }

  userMessage(content, threadId, opts) {
    return this.send(withRef({ type: 'user_message', content: String(content), thread_id: threadId }, opts));
  }

  stopAgent(runId, opts) {
    return this.send(withRef({ type: 'stop_agent', run_id: runId }, opts));
  }

  /** Receive only `threadId`'s events (null: every thread); remembered across sockets. */
  switchThread(threadId, opts) {
    this.wantedThread = threadId == null ? null : threadId;
    if (this._onlyThread != null) this._onlyThread = this.wantedThread;
    const sent = this.send(withRef({ type: 'switch_thread', thread_id: this.wantedThread }, opts));
    if (sent) this._reapply = false;
    return sent;
  }

  ping(opts) {
    return this.send(withRef({ type: 'ping' }, opts));
  }

  /** The runs this client has seen (oldest first), as copies. */
  get runs() {
    return Array.from(this._runs.values(), (r) => ({ ...r }));
  }

  /** One run, as a copy, or undefined. */
  run(runId) {
    const r = this._runs.get(runId);
    return r ? { ...r } : undefined;
  }

  // ---- connecting ----

  async _open(reason) {
    clearTimeout(this._timers.retry);
    this._timers.retry = null;
    const gen = ++this._gen;
    this._setState('connecting', { reason, message: CONNECTING[reason] || 'connecting', attempt: this._attempt });
    if (this.getToken && (!this.token || this._tokenStale || (this._refreshAt != null && Date.now() >= this._refreshAt))) {
      try {
        const got = await this.getToken({ reason: !this.token ? 'initial' : this._lastClose === 4002 ? 'expired' : 'refresh' });
        if (gen !== this._gen) return;
        this._takeToken(got);
      } catch (err) {
        if (gen !== this._gen) return;
        const [why, message] = tokenFailure(err);
        this._retry({ reason: why, message, error: err });
        return;
      }
    }
    if (!this.getToken && this.tokenExpiresAt != null && this.tokenExpiresAt <= Date.now()) {
      this._finish('token_expired', 'the sign-in token expired', 4002);
      return;
    }
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url, this.token ? ['jwt.' + this.token] : []);
    } catch (err) {
      this._finish('socket_error', 'cannot open a WebSocket: ' + (err && err.message ? err.message : err), 0);
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    ws.onopen = () => { if (ws === this._ws) this._lastRx = Date.now(); };
    ws.onmessage = (msg) => { if (ws === this._ws) this._onMessage(msg.data); };
    ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason); };
    // Browsers follow `error` with `close`; some other implementations do not.
    ws.onerror = () => {
      setTimeout(() => {
        if (ws === this._ws && ws.readyState !== 1) {
          this._onClose(1006, 'connection failed');
          try { ws.close(); } catch (err) { /* not open */ }
        }
      }, ERROR_CLOSE_GRACE_MS);
    };
  }

  _takeToken(got) {
    const token = got && typeof got === 'object' ? got.token : got;
    if (typeof token !== 'string' || !token) throw new Error('AgentwireClient: getToken must give a token string or {token, expiresAt}');
    let exp = got && typeof got === 'object' && got.expiresAt != null ? +new Date(got.expiresAt) : jwtExpiry(token);
    if (!Number.isFinite(exp)) exp = null;
    this.token = token;
    this.tokenExpiresAt = exp;
    this._tokenStale = false;
    const now = Date.now();
    // Refresh `tokenRefreshMarginMs` before expiry, or halfway through a shorter life.
    this._refreshAt = exp == null ? null : Math.max(exp - this.tokenRefreshMarginMs, now + (exp - now) / 2);
    if (this.persistToken) this._save(true);
  }

  _onClose(code, reason) {
    const welcomed = this._welcomed;
    this._detach();
    if (this.state === 'closed') return;
    if (this._openedAt && Date.now() - this._openedAt >= STABLE_AFTER_MS) this._attempt = 0;
    this._openedAt = 0;
    this._lastClose = code;
    if (code === 1012) this._drained = true;
    let [why, message, retry] = CLOSES[code] || ['closed', 'the connection closed (code ' + code + ')', true];
    if (code === 1006) {
      if (typeof navigator !== 'undefined' && navigator.onLine === false) [why, message] = ['offline', 'the browser is offline'];
      else if (!welcomed) [why, message] = ['unreachable', 'cannot reach the server'];
      // A refused upgrade looks the same as an unreachable server: try a fresh token next.
      if (!welcomed) this._tokenStale = true;
    }
    if (code === 4002) {
      if (!this.getToken) retry = false;
      this._tokenStale = true;
    }
    if (!retry) this._finish(why, message, code, reason);
    else this._retry({ reason: why, message, code, serverReason: reason || '', immediate: code === 1012 || code === 4002 });
  }

  _retry(info) {
    let delay = 0;
    if (!info.immediate) {
      const ceiling = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this._attempt);
      if (info.code === 1013 || info.code === 4008) {
        // The server is full, or this tab was too fast: an immediate retry would be refused.
        const c = Math.max(ceiling, 2000);
        delay = c / 2 + Math.random() * c / 2;
      } else {
        delay = Math.random() * ceiling; // full jitter
      }
    }
    delay = Math.floor(delay);
    this._attempt += 1;
    this._setState('reconnecting', { ...info, attempt: this._attempt, delay, retryAt: Date.now() + delay });
    clearTimeout(this._timers.retry);
    this._timers.retry = setTimeout(() => {
      this._timers.retry = null;
      if (this.state === 'reconnecting') this._open('reconnect');
    }, delay);
  }

  _wake(why) {
    if (this.state === 'reconnecting') {
      this._open(why);
      return true;
    }
    // A tab back from the background, or a network back online: check the socket is alive.
    if (this.state === 'open' && why !== 'manual' && Date.now() - this._lastRx >= 1000) this._probe();
    return false;
  }

  _probe() {
    const sent = Date.now();
    if (this._timers.probe || !this.ping()) return;
    this._timers.probe = setTimeout(() => {
      this._timers.probe = null;
      if (this.state === 'open' && this._lastRx < sent) this._dead('no answer from the server', true);
    }, PROBE_MS);
  }

  /** The socket is open but the server is silent: give it up and reconnect. */
  _dead(message, immediate) {
    const ws = this._ws;
    this._detach();
    try { ws.close(4000, 'heartbeat timeout'); } catch (err) { /* already closing */ }
    this._lastClose = 4000;
    this._retry({ reason: 'heartbeat', message, code: 4000, immediate });
  }

  _finish(reason, message, code, serverReason) {
    this._gen += 1;
    this._detach();
    this._clearTimers();
    this._listen(false);
    this._save(true);
    this._setState('closed', { reason, message, code, serverReason: serverReason || '' });
  }

  /** Lets go of the current socket without reporting its close. */
  _detach() {
    const ws = this._ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
    this._welcomed = false;
    this._resuming = null;
    clearInterval(this._timers.beat);
    clearTimeout(this._timers.refresh);
    clearTimeout(this._timers.probe);
    this._timers.beat = this._timers.refresh = this._timers.probe = null;
  }

  _clearTimers() {
    clearTimeout(this._timers.retry);
    this._timers.retry = null;
  }

  _listen(on) {
    if (on === this._listening || typeof window === 'undefined' || !window.addEventListener) return;
    this._listening = on;
    const f = on ? 'addEventListener' : 'removeEventListener';
    window[f]('online', this._onOnline);
    window[f]('pagehide', this._onPageHide);
    if (typeof document !== 'undefined') document[f]('visibilitychange', this._onVisible);
  }

  // ---- the token ----

  _armRefresh() {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (!this.getToken || this._refreshAt == null) return;
    const wait = Math.min(MAX_TIMER_MS, Math.max(0, this._refreshAt - Date.now()));
    this._timers.refresh = setTimeout(() => this._refreshToken(), wait);
  }

  async _refreshToken() {
    const gen = this._gen;
    let got;
    try {
      got = await this.getToken({ reason: 'refresh' });
      if (gen !== this._gen || this.state !== 'open') return;
      this._takeToken(got);
    } catch (err) {
      if (gen !== this._gen || this.state !== 'open') return;
      // Try again in a while; at expiry the server closes with 4002 and a reconnect follows.
      const left = (this.tokenExpiresAt || Date.now()) - Date.now();
      this._refreshAt = Date.now() + Math.max(1000, Math.min(30000, left / 2));
      this._armRefresh();
      return;
    }
    // The server reads the token at the upgrade only: move to a new socket, which resumes.
    const ws = this._ws;
    this._detach();
    if (ws && ws.readyState < 2) ws.close(1000, 'token refresh');
    this._open('token_refresh');
  }

  // ---- frames ----

  _onMessage(data) {
    this._lastRx = Date.now();
    if (typeof data !== 'string') return;
    let frame;
    try { frame = JSON.parse(data); } catch (err) { return; }
    if (!frame || typeof frame !== 'object') return;
    this._emit('frame', frame);
    const type = frame.type;
    if (type === 'welcome') this._onWelcome(frame);
    else if (EVENT_TYPES.includes(type) || (typeof frame.seq === 'number' && typeof frame.run_id === 'string')) this._onEvent(frame);
    else if (type === 'resync_required') this._onResyncRequired(frame);
    else if (type === 'resumed') this._onResumed(frame);
    else if (type === 'thread_switched') this._onThreadSwitched(frame);
    else if (type === 'error') this._emit('error', { code: frame.code, message: frame.message, ref: frame.ref });
  }

  _onWelcome(w) {
    this.sessionId = w.session_id;
    this.userId = w.user_id;
    this.heartbeatIntervalMs = w.heartbeat_interval_ms || null;
    this._welcomed = true;
    this._openedAt = Date.now();
    this.threadFilter = null; // a new socket receives every thread
    this._skipped = false;
    this._onlyThread = this.wantedThread;
    this._replayed = 0;
    const first = !this._started;
    this._started = true;
    const saved = first && this._saved && this._saved.user === w.user_id ? this._saved : null;
    let resume = null, resync = null;
    if (first && this.history) {
      // Rebuild from the server's replay buffer: every event it still holds for this epoch.
      if (saved && saved.epoch !== w.epoch) resync = 'new_epoch';
      this.epoch = w.epoch;
      this.lastSeq = 0;
      this._lossBase = saved && saved.epoch === w.epoch ? saved.seq : null;
      if (w.seq > 0) resume = { history: true };
      else this.lastSeq = w.seq;
    } else {
      if (saved) { this.epoch = saved.epoch; this.lastSeq = saved.seq; }
      this._lossBase = this.lastSeq;
      if (this.epoch == null) { this.epoch = w.epoch; this.lastSeq = w.seq; }
      else if (w.epoch !== this.epoch || w.seq < this.lastSeq) resync = this._drained ? 'server_restart' : 'new_epoch';
      else if (w.seq > this.lastSeq) resume = { history: false };
    }
    // The server holds live events back until the first frame: send it before anything else.
    this._reapply = false;
    if (resume) {
      this._resuming = resume;
      this._reapply = this.wantedThread != null;
      this._sendFirst({ type: 'resume', epoch: this.epoch, last_seq: this.lastSeq, partial: true });
    } else if (this.wantedThread != null) {
      this._sendFirst({ type: 'switch_thread', thread_id: this.wantedThread });
    } else {
      this._sendFirst({ type: 'ping' });
    }
    this._startBeat();
    this._armRefresh();
    this._drained = false;
    this._setState('open', { reason: 'connected', message: 'connected', welcome: w });
    if (resync && first && this.history) {
      this._resync(w.epoch, 0, resync, null);
      this._lossBase = null; // the history that follows is all new to this page
    } else if (resync) {
      this._resync(w.epoch, w.seq, resync, null);
    }
    this._save(false);
  }

  _sendFirst(frame) {
    if (!this.send(frame)) this._resuming = null;
  }

  _onEvent(ev) {
    const seq = ev.seq;
    if (typeof seq !== 'number') return;
    if (ev.epoch !== this.epoch || this.lastSeq == null) this._resync(ev.epoch, seq - 1, 'new_epoch', null);
    if (seq <= this.lastSeq) return; // a duplicate
    if (seq !== this.lastSeq + 1) {
      if (this._resuming) {
        // A partial replay: the events in between were no longer in the server's buffer.
        if (this._lossBase != null && seq - 1 > this._lossBase) this._resync(this.epoch, seq - 1, 'events_expired', seq - 1 - this._lossBase);
      } else if (this.threadFilter == null && !this._skipped) {
        this._emit('gap', { epoch: this.epoch, expected: this.lastSeq + 1, got: seq, missed: seq - this.lastSeq - 1 });
      }
    }
    this.lastSeq = seq;
    if (!this._resuming) this._lossBase = seq;
    else this._replayed += 1;
    this._skipped = this.threadFilter != null;
    this._save(false);
    if (this._onlyThread != null && ev.thread_id !== this._onlyThread) return;
    const change = this._track(ev);
    this._emit('event', ev);
    if (change) this._emit('run', change.run, change.previous);
  }

  _onResumed(frame) {
    const info = this._resuming || { history: false };
    this._resuming = null;
    if (typeof frame.to_seq === 'number' && this.lastSeq < frame.to_seq) {
      if (this.threadFilter == null && !this._skipped) {
        this._emit('gap', { epoch: this.epoch, expected: this.lastSeq + 1, got: frame.to_seq + 1, missed: frame.to_seq - this.lastSeq });
      }
      this.lastSeq = frame.to_seq;
    }
    this._lossBase = this.lastSeq;
    this._save(false);
    this._emit('resumed', { fromSeq: frame.from_seq, toSeq: frame.to_seq, replayed: this._replayed, history: info.history });
    this._afterResume();
  }

  _onResyncRequired(frame) {
    if (this._resuming) {
      this._resuming = null;
      const base = this._lossBase;
      if (frame.epoch !== this.epoch) this._resync(frame.epoch, frame.seq, 'new_epoch', null);
      else if (base != null && frame.seq > Math.max(base, this.lastSeq)) {
        this._resync(frame.epoch, frame.seq, 'events_expired', frame.seq - Math.max(base, this.lastSeq));
      } else {
        // Nothing this app had is missing (a new tab whose history is gone): carry on from here.
        this.lastSeq = Math.max(this.lastSeq, frame.seq);
        this._lossBase = this.lastSeq;
        this._save(false);
      }
      this._afterResume();
    } else {
      // Unasked: the server restarted this user's actor; its events continue after `seq`.
      this._resync(frame.epoch, frame.seq, 'actor_restart', frame.seq);
    }
  }

  /** The resume is answered: now the thread filter can be re-applied. */
  _afterResume() {
    if (!this._reapply) return;
    this._reapply = false;
    if (this.wantedThread != null) this.send({ type: 'switch_thread', thread_id: this.wantedThread });
  }

  _onThreadSwitched(frame) {
    // Events before this frame were filtered by the old filter, after it by the new one.
    if (this.threadFilter != null) this._skipped = true;
    this.threadFilter = frame.thread_id == null ? null : frame.thread_id;
    this._onlyThread = null;
  }

  _resync(epoch, seq, reason, missed) {
    this.epoch = epoch;
    this.lastSeq = seq;
    this._lossBase = seq;
    this._skipped = false;
    const changed = [];
    for (const run of this._runs.values()) {
      if (run.status !== 'running') continue;
      run.status = 'interrupted';
      changed.push(run);
    }
    this._save(true);
    this._emit('resync', { epoch, seq, reason, message: resyncMessage(reason, missed), missed,
      interrupted: changed.map((r) => r.runId) });
    for (const run of changed) this._emit('run', { ...run }, 'running');
  }

  // ---- runs ----

  _track(ev) {
    let run = this._runs.get(ev.run_id);
    const previous = run ? run.status : null;
    if (!run) {
      run = { runId: ev.run_id, threadId: ev.thread_id, agentName: ev.agent_name, status: 'running',
        request: null, ref: null, error: null, lastSeq: ev.seq };
      this._runs.set(ev.run_id, run);
      this._evictRuns();
    }
    run.lastSeq = ev.seq;
    const d = ev.data || {};
    if (previous === 'completed' || previous === 'failed' || previous === 'stopped') return null; // final
    if (ev.type === 'agent_started') { run.request = d.user_request ?? null; run.ref = d.ref ?? null; }
    if (ev.type === 'agent_completed') run.status = 'completed';
    else if (ev.type === 'agent_error') {
      run.status = d.code === 'cancelled' ? 'stopped' : 'failed';
      run.error = { code: d.code, message: d.message };
    } else run.status = 'running'; // an interrupted run that carries on is running again
    return run.status !== previous ? { run: { ...run }, previous } : null;
  }

  _evictRuns() {
    if (this._runs.size <= this.maxRuns) return;
    for (const [id, r] of this._runs) {
      if (r.status !== 'running') { this._runs.delete(id); return; }
    }
    this._runs.delete(this._runs.keys().next().value);
  }

  // ---- storage ----

  _load() {
    if (!this.storage) return null;
    try {
      const s = JSON.parse(this.storage.getItem(this.storageKey) || 'null');
      return s && s.v === 1 ? s : null;
    } catch (err) { return null; }
  }

  _save(now) {
    if (!this.storage) return;
    if (!now) {
      if (!this._timers.save) this._timers.save = setTimeout(() => this._save(true), SAVE_DELAY_MS);
      return;
    }
    clearTimeout(this._timers.save);
    this._timers.save = null;
    // While a history replay rebuilds the page, the saved position stays the better one.
    if (this._resuming && this._resuming.history) return;
    const s = { v: 1, user: this.userId, epoch: this.epoch, seq: this.lastSeq };
    if (!this._started && this._saved) Object.assign(s, { user: this._saved.user, epoch: this._saved.epoch, seq: this._saved.seq });
    if (this.persistToken && this.token) { s.token = this.token; s.exp = this.tokenExpiresAt; }
    try { this.storage.setItem(this.storageKey, JSON.stringify(s)); } catch (err) { /* full, or off */ }
  }

  // ---- heartbeat, state, events ----

  // Browsers answer the server's pings themselves and hide them: this detects a dead server.
  _startBeat() {
    clearInterval(this._timers.beat);
    const every = this.heartbeatIntervalMs;
    if (!this.heartbeat || !every) return;
    this._timers.beat = setInterval(() => {
      const idle = Date.now() - this._lastRx;
      if (idle > every * 2.5 && this._ws) {
        this._dead('no sign of life from the server', false);
      } else if (idle >= every) {
        this.ping();
      }
    }, every);
  }

  _setState(state, info) {
    const previous = this.state;
    this.state = state;
    this.stateInfo = { state, previous, ...info };
    this._emit('state', this.stateInfo);
  }

  _emit(name, a, b) {
    const set = this._handlers.get(name);
    if (!set) return;
    for (const fn of Array.from(set)) {
      try { fn(a, b); } catch (err) {
        if (typeof console !== 'undefined') console.error('AgentwireClient: a `' + name + '` handler threw', err);
      }
    }
  }
}

AgentwireClient.EVENT_TYPES = EVENT_TYPES;
AgentwireClient.CLIENT_EVENTS = CLIENT_EVENTS;
export default AgentwireClient;
