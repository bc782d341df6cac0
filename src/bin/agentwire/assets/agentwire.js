/*
 * agentwire.js: a small, dependency-free browser client for the agentwire WebSocket
 * protocol (v1). Plain ES2017, no build step. It connects with the token in the
 * `jwt.<token>` subprotocol, tracks `epoch`/`lastSeq`, drops duplicate events, reports
 * gaps, resumes after a reconnect, and reconnects with exponential backoff and full jitter.
 *
 * Usage:
 *   <script src="/agentwire.js"></script>
 *   <script>
 *     let asked = false;
 *     const client = new AgentwireClient({
 *       url: (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws',
 *       token: myJwt,
 *       getToken: async () => fetchFreshJwt(),      // optional: called before each reconnect
 *       onEvent: (ev) => console.log(ev.seq, ev.type, ev.data),   // agent events, deduplicated
 *       onFrame: (frame) => {},                      // every parsed frame, control frames too
 *       onStatus: (status, detail) => {
 *         // Frames can be sent once the welcome arrived ('open'), not right after connect().
 *         if (status === 'open' && !asked) asked = client.startAgent('What is the weather in Paris?');
 *       },
 *     });
 *     client.connect();
 *   </script>
 *
 * Statuses: 'connecting', 'open' (after welcome), 'reconnecting' {delay, attempt, code, reason},
 * 'closed' {code, reason}, 'resync' {epoch, seq}, 'gap' {epoch, expected, got, missed},
 * 'resumed' {from_seq, to_seq}.
 *
 * Resuming: after a reconnect's welcome, when the server's seq is ahead of lastSeq in the
 * same epoch, the client's first frame is `resume`. The server holds live events back until
 * that first frame, writes the replay, then `resumed` (or `resync_required`), then the live
 * events, so replayed events arrive in order and are handled like live ones. The thread
 * filter is re-sent only after that answer: a `switch_thread` sent first would release the
 * live events ahead of the replay.
 */
(function () {
  'use strict';

  var EVENT_TYPES = ['agent_started', 'agent_thinking', 'tool_executing',
    'tool_completed', 'agent_completed', 'agent_error'];
  // Closes caused by the client itself (or a deliberate server close): reconnecting cannot help.
  // Every other code reconnects, among them 1006 (dropped), 1011 (internal error), 1012
  // (server restart or drain), 1013 (server full) and 4008 (rate limited), both waiting
  // longer, 4000 (heartbeat), 4001 (slow consumer) and 4002 (token expired: only with
  // getToken, to fetch a fresh one); a reconnect resumes from lastSeq. 4003 (too many
  // sockets for this user) does not reconnect: another tab would just be pushed out.
  var NO_RECONNECT = [1000, 1002, 1003, 1008, 1009, 4003];
  var TOKEN_EXPIRED = 4002;
  var WAIT_LONGER = [1013, 4008], TRY_AGAIN_LATER_MIN_MS = 1000;
  var ERROR_CLOSE_GRACE_MS = 1000; // how long to wait for `close` after `error`
  var BACKOFF_BASE_MS = 500, BACKOFF_FACTOR = 2, BACKOFF_CAP_MS = 30000, STABLE_AFTER_MS = 10000;

  class AgentwireClient {
    constructor(options) {
      var o = options || {};
      if (!o.url) throw new Error('AgentwireClient: `url` is required');
      this.url = o.url;
      this.token = o.token || null;
      this.getToken = o.getToken || null;
      this.onEvent = o.onEvent || function () {};
      this.onFrame = o.onFrame || function () {};
      this.onStatus = o.onStatus || function () {};
      this.WebSocketImpl = o.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
      this.heartbeat = o.heartbeat !== false; // app-level ping when the socket is idle
      // Position in the user's event stream; may be seeded (e.g. from sessionStorage) to resume.
      this.epoch = o.epoch != null ? o.epoch : null;
      this.lastSeq = o.lastSeq != null ? o.lastSeq : null;
      this.sessionId = null;
      this.userId = null;
      this.heartbeatIntervalMs = null;
      // The thread asked for with switchThread(), re-applied on every new socket.
      this.wantedThread = null;
      // The filter in effect on the current socket: changes only when the server confirms it
      // with `thread_switched` (a new socket starts with none).
      this.threadFilter = null;
      this.status = 'idle';
      this._ws = null;
      this._welcomed = false;  // the current socket's welcome arrived: frames may be sent
      this._stopped = true;
      this._gen = 0;           // bumped by connect() and close(): older attempts are stale
      this._attempt = 0;
      this._openedAt = 0;
      this._retryTimer = null;
      this._beatTimer = null;
      this._lastRx = 0;
      this._resuming = false;  // a `resume` awaits its `resumed` / `resync_required`
      this._reapply = false;   // re-send wantedThread once the resume is answered
      this._onlyThread = null; // until the re-applied filter is confirmed, deliver only this thread
      this._skipped = false;   // seqs since lastSeq may have been filtered out: a jump is no gap
    }

    /** Opens the socket (no-op if already connecting or open). */
    connect() {
      if (!this._stopped) return;
      this._stopped = false;
      this._gen += 1;
      this._attempt = 0;
      this._open(false);
    }

    /** Closes for good: no reconnect until connect() is called again. */
    close(code, reason) {
      this._stopped = true;
      this._gen += 1;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._stopBeat();
      var ws = this._ws;
      this._ws = null;
      this._welcomed = false;
      this._resuming = false;
      if (ws && ws.readyState < 2) ws.close(code || 1000, reason || 'client closed');
      this._setStatus('closed', { code: code || 1000, reason: reason || 'client closed' });
    }

    /** Sends one frame (an object); returns false until the socket's welcome has arrived. */
    send(obj) {
      var ws = this._ws;
      if (!ws || !this._welcomed || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(obj));
      return true;
    }

    startAgent(userRequest, opts) {
      var o = opts || {};
      var frame = { type: 'start_agent', user_request: String(userRequest) };
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

    /**
     * Receive only `threadId`'s events on this socket; null receives every thread again.
     * The thread is remembered (and re-sent on every new socket); `threadFilter` follows
     * once the server confirms with `thread_switched`.
     */
    switchThread(threadId, opts) {
      this.wantedThread = threadId == null ? null : threadId;
      if (this._onlyThread != null) this._onlyThread = this.wantedThread;
      var sent = this.send(withRef({ type: 'switch_thread', thread_id: this.wantedThread }, opts));
      if (sent) this._reapply = false;
      return sent;
    }

    ping(opts) {
      return this.send(withRef({ type: 'ping' }, opts));
    }

    // ---- internals ----

    async _open(isReconnect) {
      var gen = this._gen;
      this._setStatus('connecting', { attempt: this._attempt, reconnect: isReconnect });
      if (this.getToken && (isReconnect || !this.token)) {
        var token;
        try {
          token = await this.getToken();
        } catch (err) {
          if (gen === this._gen && !this._stopped) this._scheduleReconnect(1006, 'getToken failed: ' + err);
          return;
        }
        // close() (and maybe connect() again) happened meanwhile: this attempt is stale.
        if (gen !== this._gen || this._stopped) return;
        this.token = token;
      }
      if (gen !== this._gen || this._stopped || this._ws) return;
      var ws;
      try {
        ws = new this.WebSocketImpl(this.url, this.token ? ['jwt.' + this.token] : []);
      } catch (err) {
        this._stopped = true;
        this._setStatus('closed', { code: 0, reason: 'cannot open socket: ' + err });
        return;
      }
      this._ws = ws;
      this._welcomed = false;
      ws.onopen = () => { if (ws === this._ws) { this._openedAt = Date.now(); this._lastRx = Date.now(); } };
      ws.onmessage = (msg) => { if (ws === this._ws) this._onMessage(msg.data); };
      ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason); };
      // Browsers follow `error` with `close`; some WebSocket implementations (Node 20's, when
      // the handshake fails) do not, which would leave the client waiting for ever.
      ws.onerror = () => {
        setTimeout(() => {
          if (ws === this._ws && ws.readyState !== 1) {
            this._onClose(1006, 'connection failed');
            try { ws.close(); } catch (err) { /* not open */ }
          }
        }, ERROR_CLOSE_GRACE_MS);
      };
    }

    _onClose(code, reason) {
      this._ws = null;
      this._welcomed = false;
      this._resuming = false;
      this._stopBeat();
      if (this._openedAt && Date.now() - this._openedAt >= STABLE_AFTER_MS) this._attempt = 0;
      this._openedAt = 0;
      if (this._stopped) return;
      if (NO_RECONNECT.indexOf(code) >= 0 || (code === TOKEN_EXPIRED && !this.getToken)) {
        this._stopped = true;
        this._setStatus('closed', { code: code, reason: reason || '' });
        return;
      }
      this._scheduleReconnect(code, reason);
    }

    _scheduleReconnect(code, reason) {
      var ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(BACKOFF_FACTOR, this._attempt));
      var delay = Math.floor(Math.random() * ceiling); // full jitter
      if (WAIT_LONGER.indexOf(code) >= 0) {
        // The server is full, or we were too fast: an immediate retry would be refused too.
        ceiling = Math.max(ceiling, 2 * TRY_AGAIN_LATER_MIN_MS);
        delay = Math.floor(ceiling / 2 + Math.random() * ceiling / 2);
      }
      this._attempt += 1;
      this._setStatus('reconnecting', { delay: delay, attempt: this._attempt, code: code, reason: reason || '' });
      clearTimeout(this._retryTimer);
      var gen = this._gen;
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        if (gen === this._gen && !this._stopped) this._open(true);
      }, delay);
    }

    _onMessage(data) {
      this._lastRx = Date.now();
      if (typeof data !== 'string') return;
      var frame;
      try { frame = JSON.parse(data); } catch (err) { return; }
      if (!frame || typeof frame !== 'object') return;
      this._call('onFrame', frame);
      var type = frame.type;
      if (type === 'welcome') this._onWelcome(frame);
      else if (EVENT_TYPES.indexOf(type) >= 0 || (typeof frame.seq === 'number' && typeof frame.run_id === 'string')) this._onEvent(frame);
      else if (type === 'resync_required') this._onResyncRequired(frame);
      else if (type === 'resumed') this._onResumed(frame);
      else if (type === 'thread_switched') this._onThreadSwitched(frame);
    }

    _onWelcome(w) {
      this.sessionId = w.session_id;
      this.userId = w.user_id;
      this.heartbeatIntervalMs = w.heartbeat_interval_ms || null;
      this._welcomed = true;
      this.threadFilter = null; // a new socket receives every thread
      this._skipped = false;
      var resync = false, resume = false;
      if (this.epoch == null || this.lastSeq == null) {
        this.epoch = w.epoch;
        this.lastSeq = w.seq;
      } else if (w.epoch !== this.epoch || w.seq < this.lastSeq) {
        resync = true;
      } else {
        resume = w.seq > this.lastSeq; // nothing to ask for when we are up to date
      }
      // Until the wanted filter is confirmed on this socket, other threads' events (of the
      // replay, for instance) are accounted for but not delivered, as on the old socket.
      this._onlyThread = this.wantedThread;
      // The server holds live events back until the first frame, so send one at once. When
      // resuming it must be `resume` (the filter follows its answer); else the filter, or a ping.
      this._resuming = resume;
      this._reapply = false;
      if (resume) {
        this._reapply = this.wantedThread != null;
        this.send({ type: 'resume', epoch: this.epoch, last_seq: this.lastSeq });
      } else if (this.wantedThread != null) {
        this.send({ type: 'switch_thread', thread_id: this.wantedThread });
      } else {
        this.send({ type: 'ping' });
      }
      this._startBeat();
      this._setStatus('open', w);
      if (resync) this._resync(w.epoch, w.seq);
    }

    _onEvent(ev) {
      var seq = ev.seq;
      if (ev.epoch !== this.epoch || this.lastSeq == null) {
        this._resync(ev.epoch, seq - 1);
      }
      if (seq <= this.lastSeq) return; // duplicate
      // A jump is a gap unless a thread filter may have skipped the seqs in between. While
      // a resume is unanswered, an event means the server stopped holding live events back
      // before our `resume` arrived: its answer will be `resync_required`, which says it.
      if (seq !== this.lastSeq + 1 && this.threadFilter == null && !this._skipped && !this._resuming) {
        this._setStatus('gap', { epoch: this.epoch, expected: this.lastSeq + 1, got: seq, missed: seq - this.lastSeq - 1 });
      }
      this.lastSeq = seq;
      this._skipped = this.threadFilter != null;
      if (this._onlyThread != null && ev.thread_id !== this._onlyThread) return;
      this._call('onEvent', ev);
    }

    _onResumed(frame) {
      this._resuming = false;
      // The replay covers from_seq..to_seq (unfiltered: no switch_thread preceded it).
      if (typeof frame.to_seq === 'number' && this.lastSeq < frame.to_seq) {
        if (this.threadFilter == null && !this._skipped) {
          this._setStatus('gap', { epoch: this.epoch, expected: this.lastSeq + 1, got: frame.to_seq + 1, missed: frame.to_seq - this.lastSeq });
        }
        this.lastSeq = frame.to_seq;
      }
      this._setStatus('resumed', { from_seq: frame.from_seq, to_seq: frame.to_seq });
      this._afterResume();
    }

    _onResyncRequired(frame) {
      this._resync(frame.epoch, frame.seq);
      this._afterResume();
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

    _resync(epoch, seq) {
      this.epoch = epoch;
      this.lastSeq = seq;
      this._resuming = false;
      this._skipped = false;
      this._setStatus('resync', { epoch: epoch, seq: seq });
    }

    // Browsers answer the server's WebSocket pings themselves; this detects a dead server.
    _startBeat() {
      this._stopBeat();
      var every = this.heartbeatIntervalMs;
      if (!this.heartbeat || !every) return;
      this._beatTimer = setInterval(() => {
        var idle = Date.now() - this._lastRx;
        if (idle > every * 2.5 && this._ws) {
          var ws = this._ws;
          this._onClose(4000, 'no frame from the server (client heartbeat)');
          try { ws.close(4000, 'heartbeat timeout'); } catch (err) { /* already closing */ }
        } else if (idle >= every) {
          this.ping();
        }
      }, every);
    }

    _stopBeat() {
      clearInterval(this._beatTimer);
      this._beatTimer = null;
    }

    _setStatus(status, detail) {
      if (status !== 'resync' && status !== 'gap' && status !== 'resumed') this.status = status;
      this._call('onStatus', status, detail);
    }

    _call(name, a, b) {
      try { this[name](a, b); } catch (err) {
        if (typeof console !== 'undefined') console.error('AgentwireClient: ' + name + ' threw', err);
      }
    }
  }

  function withRef(frame, opts) {
    if (opts && opts.ref != null) frame.ref = opts.ref;
    return frame;
  }

  AgentwireClient.EVENT_TYPES = EVENT_TYPES;
  AgentwireClient.NO_RECONNECT_CODES = NO_RECONNECT;
  if (typeof window !== 'undefined') window.AgentwireClient = AgentwireClient;
  if (typeof module !== 'undefined' && module.exports) module.exports = AgentwireClient;
})();
