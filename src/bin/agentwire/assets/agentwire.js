/*
 * agentwire.js: a small, dependency-free browser client for the agentwire WebSocket
 * protocol (v1). Plain ES2017, no build step. It connects with the token in the
 * `jwt.<token>` subprotocol, tracks `epoch`/`lastSeq`, drops duplicate events, reports
 * gaps, resumes after a reconnect, and reconnects with exponential backoff and full jitter.
 *
 * Usage:
 *   <script src="/agentwire.js"></script>
 *   <script>
 *     const client = new AgentwireClient({
 *       url: (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws',
 *       token: myJwt,
 *       getToken: async () => fetchFreshJwt(),      // optional: called before each reconnect
 *       onEvent: (ev) => console.log(ev.seq, ev.type, ev.data),   // agent events, deduplicated
 *       onFrame: (frame) => {},                      // every parsed frame, control frames too
 *       onStatus: (status, detail) => console.log(status, detail),
 *     });
 *     client.connect();
 *     client.startAgent('What is the weather in Paris?');
 *   </script>
 *
 * Statuses: 'connecting', 'open' (after welcome), 'reconnecting' {delay, attempt, code},
 * 'closed' {code, reason}, 'resync' {epoch, seq}, 'gap' {epoch, expected, got, missed},
 * 'resumed' {from_seq, to_seq}.
 */
(function () {
  'use strict';

  var EVENT_TYPES = ['agent_started', 'agent_thinking', 'tool_executing',
    'tool_completed', 'agent_completed', 'agent_error'];
  // Closes caused by the client itself (or a deliberate server close): reconnecting cannot help.
  var NO_RECONNECT = [1000, 1002, 1003, 1008, 1009];
  var BACKOFF_BASE_MS = 500, BACKOFF_FACTOR = 2, BACKOFF_CAP_MS = 30000, STABLE_AFTER_MS = 10000;
  var MAX_PENDING = 10000; // bound on out-of-order seqs remembered while resuming

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
      this.threadFilter = null; // the thread passed to switchThread(), re-applied on reconnect
      this.status = 'idle';
      this._ws = null;
      this._stopped = true;
      this._attempt = 0;
      this._openedAt = 0;
      this._retryTimer = null;
      this._beatTimer = null;
      this._lastRx = 0;
      this._resuming = false;
      this._resumeTo = null;
      this._ahead = new Set(); // seqs delivered beyond lastSeq + 1 while resuming
    }

    /** Opens the socket (no-op if already connecting or open). */
    connect() {
      if (!this._stopped) return;
      this._stopped = false;
      this._attempt = 0;
      this._open(false);
    }

    /** Closes for good: no reconnect until connect() is called again. */
    close(code, reason) {
      this._stopped = true;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._stopBeat();
      var ws = this._ws;
      this._ws = null;
      if (ws && ws.readyState < 2) ws.close(code || 1000, reason || 'client closed');
      this._setStatus('closed', { code: code || 1000, reason: reason || 'client closed' });
    }

    /** Sends one frame (an object); returns false when the socket is not open. */
    send(obj) {
      var ws = this._ws;
      if (!ws || ws.readyState !== 1) return false;
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

    /** Receive only `threadId`'s events on this socket; null receives every thread again. */
    switchThread(threadId, opts) {
      this.threadFilter = threadId == null ? null : threadId;
      return this.send(withRef({ type: 'switch_thread', thread_id: this.threadFilter }, opts));
    }

    ping(opts) {
      return this.send(withRef({ type: 'ping' }, opts));
    }

    // ---- internals ----

    async _open(isReconnect) {
      this._setStatus('connecting', { attempt: this._attempt, reconnect: isReconnect });
      if (this.getToken && (isReconnect || !this.token)) {
        try {
          this.token = await this.getToken();
        } catch (err) {
          if (!this._stopped) this._scheduleReconnect(1006, 'getToken failed: ' + err);
          return;
        }
        if (this._stopped) return;
      }
      var ws;
      try {
        ws = new this.WebSocketImpl(this.url, this.token ? ['jwt.' + this.token] : []);
      } catch (err) {
        this._stopped = true;
        this._setStatus('closed', { code: 0, reason: 'cannot open socket: ' + err });
        return;
      }
      this._ws = ws;
      ws.onopen = () => { if (ws === this._ws) { this._openedAt = Date.now(); this._lastRx = Date.now(); } };
      ws.onmessage = (msg) => { if (ws === this._ws) this._onMessage(msg.data); };
      ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason); };
      ws.onerror = function () {}; // a close event always follows
    }

    _onClose(code, reason) {
      this._ws = null;
      this._stopBeat();
      if (this._openedAt && Date.now() - this._openedAt >= STABLE_AFTER_MS) this._attempt = 0;
      this._openedAt = 0;
      if (this._stopped) return;
      if (NO_RECONNECT.indexOf(code) >= 0) {
        this._stopped = true;
        this._setStatus('closed', { code: code, reason: reason || '' });
        return;
      }
      this._scheduleReconnect(code, reason);
    }

    _scheduleReconnect(code, reason) {
      var ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(BACKOFF_FACTOR, this._attempt));
      var delay = Math.floor(Math.random() * ceiling); // full jitter
      this._attempt += 1;
      this._setStatus('reconnecting', { delay: delay, attempt: this._attempt, code: code, reason: reason || '' });
      clearTimeout(this._retryTimer);
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        if (!this._stopped) this._open(true);
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
      else if (type === 'resync_required') this._resync(frame.epoch, frame.seq);
      else if (type === 'resumed') this._onResumed(frame);
      else if (type === 'thread_switched') this.threadFilter = frame.thread_id == null ? null : frame.thread_id;
    }

    _onWelcome(w) {
      this.sessionId = w.session_id;
      this.userId = w.user_id;
      this.heartbeatIntervalMs = w.heartbeat_interval_ms || null;
      var resync = false, resume = false;
      if (this.epoch == null || this.lastSeq == null) {
        this.epoch = w.epoch;
        this.lastSeq = w.seq;
      } else if (w.epoch !== this.epoch || w.seq < this.lastSeq) {
        resync = true;
      } else {
        resume = w.seq > this.lastSeq; // nothing to ask for when we are up to date
      }
      this._resuming = false;
      this._ahead.clear();
      // A new socket receives every thread: re-apply the filter before replaying.
      if (this.threadFilter != null) this.send({ type: 'switch_thread', thread_id: this.threadFilter });
      if (resume) {
        this._resuming = true;
        this._resumeTo = null;
        this.send({ type: 'resume', epoch: this.epoch, last_seq: this.lastSeq });
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
      if (seq <= this.lastSeq || this._ahead.has(seq)) return; // duplicate
      if (seq === this.lastSeq + 1) {
        this.lastSeq = seq;
        while (this._ahead.delete(this.lastSeq + 1)) this.lastSeq += 1;
      } else if (this._resuming) {
        this._ahead.add(seq); // replayed and live events may interleave; wait for the hole to fill
        if (this._ahead.size > MAX_PENDING) this._finishResume();
      } else {
        if (this.threadFilter == null) {
          this._setStatus('gap', { epoch: this.epoch, expected: this.lastSeq + 1, got: seq, missed: seq - this.lastSeq - 1 });
        }
        this.lastSeq = seq; // with a thread filter, other threads' seqs are simply skipped
      }
      if (this._resuming && this._resumeTo != null && this.lastSeq >= this._resumeTo) this._finishResume();
      this._call('onEvent', ev);
    }

    _onResumed(frame) {
      this._resumeTo = frame.to_seq;
      this._setStatus('resumed', { from_seq: frame.from_seq, to_seq: frame.to_seq });
      // With a thread filter the replay skips other threads, so holes never fill.
      if (this.threadFilter != null || this.lastSeq >= frame.to_seq) this._finishResume();
    }

    _finishResume() {
      this._resuming = false;
      if (this._ahead.size === 0) return;
      var seqs = Array.from(this._ahead);
      var min = Math.min.apply(null, seqs), max = Math.max.apply(null, seqs);
      if (this.threadFilter == null) {
        this._setStatus('gap', { epoch: this.epoch, expected: this.lastSeq + 1, got: min, missed: min - this.lastSeq - 1 });
      }
      this._ahead.clear();
      this.lastSeq = Math.max(this.lastSeq, max, this._resumeTo || 0);
    }

    _resync(epoch, seq) {
      this.epoch = epoch;
      this.lastSeq = seq;
      this._resuming = false;
      this._ahead.clear();
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
