// Switchyard status page: polls /status every second and renders it.
//
// Plain DOM, no framework, no build step. Every value from /status goes in
// with textContent or setAttribute, never parsed as HTML. Read-only: the
// page sends nothing but GET /status.
//
// Stable hooks for tests and scripts: rows and cards carry data-listener,
// data-backend (+ data-state), data-endpoint (+ data-health,
// data-requests, data-failures, data-rps), data-watch, data-template,
// data-registration and data-reload (+ data-result, data-trigger);
// #updated carries data-polls, the number of successful polls.
'use strict';

(function () {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  // Rates are the change of the counters over this window of samples.
  const RATE_WINDOW_MS = 10000;

  /** "backend|address" -> [{t, req, fail}], oldest first. */
  const samples = new Map();
  /** Section id -> the key of what it shows, to skip unchanged ones. */
  const shown = new Map();
  let polls = 0;
  let lastOk = null;

  // === DOM helpers ===

  /** An element with attributes (`text` sets textContent) and children. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  const dash = () => el('span', { class: 'muted', text: '—' });
  const none = (what) => el('p', { class: 'muted none', text: what });

  function badge(word, tone) {
    return el('span', { class: 'badge ' + (tone || word), text: word });
  }

  /**
   * A table that turns into labelled blocks on a narrow screen: each cell
   * carries its column name in data-label for the CSS to show.
   */
  function table(headers, rows, cls) {
    return el('div', { class: 'table-wrap' },
      el('table', { class: cls || '' },
        el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col', text: h })))),
        el('tbody', {}, rows)));
  }

  function row(attrs, headers, cells) {
    return el('tr', attrs, cells.map((c, i) =>
      el('td', { 'data-label': headers[i] }, c === undefined || c === null || c === '' ? dash() : c)));
  }

  function list(items, cls) {
    return items.length ? el('ul', { class: cls || 'plain' }, items.map((i) => el('li', {}, i))) : dash();
  }

  /** Replaces a section's content only when what it shows changed. */
  function put(id, key, build) {
    if (shown.get(id) === key) return;
    shown.set(id, key);
    const target = document.getElementById(id);
    if (target) target.replaceChildren(...[].concat(build()));
  }

  function toggle(id, visible) {
    const e = document.getElementById(id);
    if (e) e.hidden = !visible;
  }

  // === formatting ===

  function clock(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const d = new Date(t);
    const time = d.toLocaleTimeString([], { hour12: false });
    return d.toDateString() === new Date().toDateString() ? time : d.toLocaleDateString() + ' ' + time;
  }

  function when(iso) {
    return iso ? el('time', { datetime: iso, title: iso, text: clock(iso) }) : dash();
  }

  function perSecond(r) {
    if (r === null || r === undefined) return '—';
    return (r >= 10 ? r.toFixed(0) : r.toFixed(1)) + '/s';
  }

  function percent(p) {
    if (p === null || p === undefined) return '—';
    return (p > 0 && p < 0.1 ? '<0.1' : p.toFixed(1)) + ' %';
  }

  function plural(n, word) {
    return n + ' ' + word + (n === 1 ? '' : 's');
  }

  // === rates ===

  function track(now, key, req, fail, seen) {
    seen.add(key);
    let s = samples.get(key);
    if (!s) samples.set(key, (s = []));
    const last = s[s.length - 1];
    // Counters that went back belong to a new endpoint state: start over.
    if (last && (req < last.req || fail < last.fail)) s.length = 0;
    s.push({ t: now, req, fail });
    while (s.length > 2 && now - s[1].t >= RATE_WINDOW_MS) s.shift();
  }

  /** {rps, requests, failures} over the window, or null before 2 samples. */
  function rate(key) {
    const s = samples.get(key);
    if (!s || s.length < 2) return null;
    const a = s[0];
    const b = s[s.length - 1];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) return null;
    return { rps: (b.req - a.req) / dt, requests: b.req - a.req, failures: b.fail - a.fail };
  }

  function errorPct(r) {
    return r && r.requests > 0 ? (100 * r.failures) / r.requests : null;
  }

  function sumRates(rates) {
    const known = rates.filter((r) => r);
    if (!known.length) return null;
    return known.reduce((a, r) => ({
      rps: a.rps + r.rps, requests: a.requests + r.requests, failures: a.failures + r.failures,
    }), { rps: 0, requests: 0, failures: 0 });
  }

  // === the parts of the page ===

  /** healthy | unhealthy | ejected | draining, the word a row shows. */
  function health(e) {
    if (e.draining) return 'draining';
    if (!e.healthy) return 'unhealthy';
    if (e.ejected) return 'ejected';
    return 'healthy';
  }

  function renderProcess(s) {
    const facts = [
      ['PID', String(s.pid)],
      ['Config version', String(s.version)],
      ['Config', (s.config_files || []).join(', ')],
    ];
    const up = s.upgrade || {};
    let upgrade = up.state || 'idle';
    if (up.state === 'in_progress') upgrade += ' since ' + clock(up.since);
    if (up.state === 'replaced') upgrade += ' by PID ' + up.by_pid + ' at ' + clock(up.at);
    facts.push(['Upgrade', upgrade]);
    const last = s.last_upgrade;
    if (last) {
      let text = last.result + ' at ' + clock(last.at);
      if (last.new_pid) text += ', new PID ' + last.new_pid;
      if (last.exit_code !== null && last.exit_code !== undefined) text += ', exit ' + last.exit_code;
      if (last.error) text += ': ' + last.error;
      facts.push(['Last upgrade', text]);
    }
    if (s.predecessor) {
      facts.push(['Predecessor', 'PID ' + s.predecessor.pid + ' draining ' +
        plural(s.predecessor.draining_connections, 'connection') + ' since ' + clock(s.predecessor.since)]);
    }
    if (s.kv_dir) facts.push(['kv dir', s.kv_dir.dir + ' (' + plural(s.kv_dir.keys, 'key') + ')']);
    if (s.shutting_down) facts.push(['State', 'shutting down: draining']);
    put('process', JSON.stringify(facts), () => facts.map(([k, v]) => el('div', {},
      el('dt', { text: k }),
      el('dd', { 'data-fact': k, text: v }))));
  }

  function renderSummary(s, backends) {
    const count = (state) => backends.filter((b) => b.state === state).length;
    const total = sumRates(backends.flatMap((b) =>
      (b.endpoints || []).map((e) => rate(b.name + '|' + e.address))));
    const items = [
      ['listeners', plural((s.listeners || []).length, 'listener'), ''],
      ['up', count('up') + ' up', 'up'],
      ['degraded', count('degraded') + ' degraded', count('degraded') ? 'degraded' : ''],
      ['down', count('down') + ' down', count('down') ? 'down' : ''],
      ['rate', 'requests ' + perSecond(total ? total.rps : null), ''],
      ['errors', 'errors ' + percent(errorPct(total)), total && total.failures ? 'degraded' : ''],
    ];
    put('summary', JSON.stringify(items), () => items.map(([key, text, tone]) =>
      el('li', { 'data-summary': key, class: tone ? 'chip ' + tone : 'chip', text })));
  }

  function certificates(tls) {
    if (!tls) return dash();
    const now = Date.now();
    return el('div', {},
      el('div', { class: 'muted', text: 'TLS ' + tls.min_version + '+, unknown SNI: ' + tls.unknown_sni }),
      list((tls.certificates || []).map((c) => {
        const end = Date.parse(c.not_after);
        const days = Math.floor((end - now) / 86400000);
        const tone = end < now ? 'bad' : days < 14 ? 'warn' : '';
        return el('span', { class: 'cert ' + tone, title: c.cert_file, 'data-not-after': c.not_after },
          (c.names || []).join(', ') + ' — until ' + clock(c.not_after) +
          (end < now ? ' (expired)' : ' (' + plural(days, 'day') + ')'));
      }), 'plain'));
  }

  function routes(l) {
    const items = (l.route_list || []).map((r) =>
      el('span', { class: 'route', 'data-route-backend': r.backend },
        el('code', { text: (r.host === '*' ? '' : r.host) + r.path }), ' → ', r.backend));
    if (l.default_backend) {
      items.push(el('span', { class: 'route', 'data-route-backend': l.default_backend },
        el('em', { text: 'default' }), ' → ', l.default_backend));
    }
    return list(items, 'plain');
  }

  function renderListeners(listeners) {
    const headers = ['Listener', 'Bind', 'Address', 'Mode', 'Connections', 'Routes', 'TLS'];
    // The minute is part of the key: certificate days left change with it.
    put('listeners', JSON.stringify([listeners, Math.floor(Date.now() / 60000)]), () =>
      listeners.length ? table(headers, listeners.map((l) => row(
        { 'data-listener': l.name },
        headers,
        [
          el('strong', { text: l.name }),
          el('code', { text: l.bind }),
          l.local_addr ? el('code', { text: l.local_addr }) : dash(),
          l.mode,
          String(l.active_connections) + (l.max_connections ? ' / ' + l.max_connections : ''),
          routes(l),
          certificates(l.tls),
        ],
      ))) : none('No listeners.'));
  }

  function ejection(e) {
    if (!e.ejection) return dash();
    const j = e.ejection;
    return el('span', { title: 'since ' + j.since },
      j.reason.replace(/_/g, ' ') + ' until ' + clock(j.until) + ' (#' + j.ejections + ')');
  }

  function checks(e) {
    const c = e.health_checks;
    if (!c) return dash();
    const streak = c.failures_in_a_row ? c.failures_in_a_row + ' failed in a row'
      : c.successes_in_a_row + ' ok in a row';
    return el('span', {},
      el('span', { class: 'muted', text: plural(c.checks, 'check') + ', ' + streak }),
      c.last_error ? el('div', { class: 'error', text: c.last_error }) : null);
  }

  const ENDPOINT_HEADERS = ['Endpoint', 'Origin', 'Health', 'Checks', 'Ejection', 'In flight',
    'Requests', 'Rate', 'Recent errors'];

  function endpointRow(backend, e, withBackend) {
    const r = rate(backend + '|' + e.address);
    const h = health(e);
    const pct = errorPct(r);
    const cells = [
      el('code', { text: e.address }),
      e.origin ? e.origin + (e.weight !== null && e.weight !== undefined && e.weight !== 1
        ? ' (weight ' + e.weight + ')' : '') : 'removed',
      badge(h),
      checks(e),
      ejection(e),
      String(e.active_connections),
      String(e.requests_total) + (e.failures_total ? ' (' + e.failures_total + ' failed)' : ''),
      perSecond(r ? r.rps : null),
      el('span', { class: pct ? 'error' : '', text: percent(pct) }),
    ];
    const headers = withBackend ? ['Backend', ...ENDPOINT_HEADERS] : ENDPOINT_HEADERS;
    if (withBackend) cells.unshift(backend);
    return row({
      'data-endpoint': e.address,
      'data-health': h,
      'data-requests': e.requests_total,
      'data-failures': e.failures_total,
      'data-rps': r ? r.rps.toFixed(2) : '',
      class: 'health-' + h,
    }, headers, cells);
  }

  function backendCard(b) {
    const eps = b.endpoints || [];
    const rates = eps.map((e) => rate(b.name + '|' + e.address));
    const total = sumRates(rates);
    const inRotation = eps.filter((e) => e.healthy && !e.ejected && !e.draining).length;
    let detail;
    if (b.kind === 'respond') detail = 'Answers by itself (respond); no endpoints.';
    else if (b.kind === 'gateway') detail = 'Makes a backend per service named in the request (see Gateway backends).';
    else detail = inRotation + ' of ' + plural(eps.length, 'endpoint') + ' in rotation';
    const body = b.kind === 'respond' || b.kind === 'gateway' ? null
      : eps.length ? table(ENDPOINT_HEADERS, eps.map((e) => endpointRow(b.name, e, false)), 'endpoints')
        : none('No endpoints: every request gets 503.');
    return el('article', { class: 'card backend state-' + b.state, 'data-backend': b.name, 'data-state': b.state },
      el('header', { class: 'card-head' },
        el('h3', { text: b.name }),
        badge(b.state),
        el('span', { class: 'muted', text: b.kind + ' · ' + b.balance + ' · ' + b.protocol })),
      el('p', { class: 'card-sub' },
        el('span', { text: detail }),
        el('span', { class: 'rate', 'data-backend-rps': total ? total.rps.toFixed(2) : '' },
          'requests ' + perSecond(total ? total.rps : null) + ' · errors ' + percent(errorPct(total)))),
      body);
  }

  function renderBackends(id, backends, emptyText) {
    // Rates move every poll: the key holds them as shown.
    const key = JSON.stringify([backends, backends.map((b) =>
      (b.endpoints || []).map((e) => rate(b.name + '|' + e.address)))]);
    put(id, key, () => backends.length ? backends.map(backendCard) : none(emptyText));
  }

  function renderDraining(draining) {
    toggle('draining-section', draining.length > 0);
    const headers = ['Backend', ...ENDPOINT_HEADERS];
    put('draining', JSON.stringify(draining), () =>
      table(headers, draining.map((e) => endpointRow(e.backend, e, true)), 'endpoints'));
  }

  function watchRow(w, headers) {
    if (w.kind === 'dns') {
      const tone = { resolved: 'ok', holding: 'warn', failed: 'bad', pending: 'muted' }[w.state] || '';
      return row({ 'data-watch': w.name, 'data-watch-state': w.state }, headers, [
        'DNS ' + w.query,
        el('code', { text: w.name }),
        el('span', {}, badge(w.state, tone), w.hold_until ? ' until ' + clock(w.hold_until) : ''),
        el('span', {}, list((w.addresses || []).map((a) => el('code', { text: a })), 'plain'),
          w.ttl_seconds !== null && w.ttl_seconds !== undefined
            ? el('span', { class: 'muted', text: 'TTL ' + Math.round(w.ttl_seconds) + ' s' }) : null),
        when(w.last_success),
        w.next_refresh ? el('span', {}, 'next lookup ', when(w.next_refresh)) : dash(),
        w.last_error ? el('span', { class: 'error', text: w.last_error }) : dash(),
      ]);
    }
    if (w.kind === 'mdns') {
      const found = w.instances || [];
      const state = w.last_error ? 'error' : found.length ? 'found' : 'none';
      const tone = { found: 'ok', error: 'bad', none: 'warn' }[state];
      return row({ 'data-watch': w.service, 'data-watch-state': state }, headers, [
        'mDNS ' + w.flavour,
        el('code', { text: w.service }),
        badge(state, tone),
        el('span', {}, list(found.map((i) => el('code', { text: i.name + ' ' + i.addr })), 'plain'),
          el('span', { class: 'muted', text: plural(found.length, 'instance') })),
        when(w.last_answer),
        el('span', { class: w.staleness_seconds > 300 ? 'error' : '' },
          Number(w.staleness_seconds).toFixed(1) + ' s since an answer'),
        w.last_error ? el('span', { class: 'error', text: w.last_error }) : dash(),
      ]);
    }
    let state = w.ok ? 'ok' : w.last_error ? 'error' : 'pending';
    if (w.stale_from_state_file) state = 'state file';
    const tone = { ok: 'ok', error: 'bad', pending: 'muted', 'state file': 'warn' }[state];
    return row({ 'data-watch': w.watch, 'data-watch-state': state }, headers, [
      'Consul',
      el('code', { text: w.watch }),
      badge(state, tone),
      (w.items === null || w.items === undefined ? '—' : plural(w.items, 'item')) + ' · index ' + w.index,
      when(w.last_success),
      el('span', { class: w.staleness_seconds > 60 ? 'error' : '' },
        Number(w.staleness_seconds).toFixed(1) + ' s since an answer'),
      w.last_error ? el('span', { class: 'error', text: w.last_error }) : dash(),
    ]);
  }

  function renderWatches(watches) {
    const headers = ['Source', 'Watch', 'State', 'Data', 'Last success', 'Staleness', 'Last error'];
    put('watches', JSON.stringify(watches), () => watches.length
      ? table(headers, watches.map((w) => watchRow(w, headers)))
      : none('No DNS names, Consul or mDNS watches.'));
  }

  function renderTemplates(templates) {
    const headers = ['Template', 'Destination', 'State', 'Waiting for', 'Renders', 'Last write',
      'Last error', 'Command'];
    const tones = { rendered: 'ok', pending: 'muted', held: 'warn', error: 'bad', rejected: 'bad',
      source_error: 'bad' };
    put('templates', JSON.stringify(templates), () => templates.length ? table(headers,
      templates.map((t) => row({ 'data-template': t.template, 'data-template-state': t.state }, headers, [
        el('code', { text: t.template }),
        el('code', { text: t.destination }),
        badge(t.state, tones[t.state]),
        list((t.waiting_for || []).map((w) => el('code', { text: w })), 'plain'),
        t.renders + ' renders, ' + t.writes + ' writes',
        when(t.last_write),
        t.source_error || t.last_error
          ? el('span', { class: 'error', text: t.source_error || t.last_error }) : dash(),
        t.command ? el('span', {}, el('code', { text: t.command }),
          t.last_command ? el('div', { class: 'muted', text: t.last_command }) : null) : dash(),
      ]))) : none('No templates.'));
  }

  function renderRegistrations(regs) {
    const headers = ['Service', 'ID', 'State', 'Registered', 'Last registered', 'TTL check',
      'Last error'];
    put('registrations', JSON.stringify(regs), () => regs.length ? table(headers,
      regs.map((r) => row({ 'data-registration': r.id, 'data-registration-state': r.state }, headers, [
        el('strong', { text: r.service }),
        el('code', { text: r.id }),
        badge(r.state.replace(/_/g, ' '), r.state === 'registered' ? 'ok' : 'warn'),
        plural(r.registrations, 'time'),
        when(r.last_registered),
        r.ttl_check ? badge(r.ttl_check, r.ttl_check === 'passing' ? 'ok' : 'bad') : dash(),
        r.last_error ? el('span', { class: 'error', text: r.last_error }) : dash(),
      ]))) : none('No services registered in Consul.'));
  }

  function diff(d) {
    if (!d) return dash();
    const lines = [];
    for (const kind of ['listeners', 'routes', 'backends', 'servers']) {
      const c = d[kind];
      if (!c || !(c.added.length || c.removed.length || c.changed.length)) continue;
      lines.push(el('span', { 'data-diff': kind },
        el('span', { class: 'muted', text: kind + ': ' }),
        c.added.map((n) => el('span', { class: 'add', text: '+' + n + ' ' })),
        c.removed.map((n) => el('span', { class: 'remove', text: '−' + n + ' ' })),
        c.changed.map((n) => el('span', { class: 'change', text: '~' + n + ' ' }))));
    }
    return lines.length ? list(lines, 'plain') : el('span', { class: 'muted', text: 'no change' });
  }

  function renderReloads(s) {
    const reloads = (s.reloads || []).slice();
    const failure = s.last_failure;
    // The last failure may be older than the kept history.
    if (failure && !reloads.some((r) => r.at === failure.at && r.result === failure.result)) {
      reloads.push(failure);
    }
    const headers = ['When', 'Trigger', 'Result', 'Version', 'Changes', 'Errors'];
    const tones = { success: 'ok', unchanged: 'muted', failure: 'bad' };
    put('reloads', JSON.stringify(reloads), () => reloads.length ? table(headers,
      reloads.map((r, i) => row({ 'data-reload': i, 'data-result': r.result, 'data-trigger': r.trigger },
        headers, [
          when(r.at),
          r.trigger.replace(/_/g, ' '),
          badge(r.result, tones[r.result]),
          String(r.version),
          diff(r.diff),
          (r.errors || []).length
            ? list(r.errors.map((e) => el('span', { class: 'error', text: e })), 'plain') : dash(),
        ]))) : none('No reloads yet.'));
  }

  function render(s) {
    const now = Date.now();
    const seen = new Set();
    const all = [...(s.backends || []), ...(s.gateway_backends || [])];
    for (const b of all) {
      for (const e of b.endpoints || []) {
        track(now, b.name + '|' + e.address, e.requests_total, e.failures_total, seen);
      }
    }
    for (const e of s.draining_endpoints || []) {
      track(now, e.backend + '|' + e.address, e.requests_total, e.failures_total, seen);
    }
    for (const key of [...samples.keys()]) if (!seen.has(key)) samples.delete(key);

    renderProcess(s);
    renderSummary(s, s.backends || []);
    renderListeners(s.listeners || []);
    renderBackends('backends', s.backends || [], 'No backends.');
    renderDraining(s.draining_endpoints || []);
    toggle('gateway-section', (s.gateway_backends || []).length > 0);
    renderBackends('gateway', s.gateway_backends || [], 'No gateway backends.');
    renderWatches(s.watches || []);
    renderTemplates(s.templates || []);
    renderRegistrations(s.registrations || []);
    renderReloads(s);
  }

  // === polling ===

  function setConnected(ok, reason) {
    toggle('offline', !ok);
    document.body.classList.toggle('stale', !ok);
    const why = document.getElementById('offline-reason');
    if (why) why.textContent = ok ? '' : reason;
    const updated = document.getElementById('updated');
    if (!updated) return;
    updated.setAttribute('data-polls', String(polls));
    updated.textContent = lastOk
      ? (ok ? 'Updated ' : 'Last updated ') + lastOk.toLocaleTimeString([], { hour12: false })
      : 'Not loaded yet';
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    let status = null;
    try {
      const resp = await fetch('/status', { cache: 'no-store', signal: abort.signal });
      if (!resp.ok) throw new Error('/status answered ' + resp.status);
      status = await resp.json();
    } catch (error) {
      const reason = error && error.name === 'AbortError' ? 'no answer within 5 s'
        : String((error && error.message) || error);
      setConnected(false, reason);
    } finally {
      clearTimeout(timer);
    }
    if (status) {
      try {
        render(status);
        polls += 1;
        lastOk = new Date();
        setConnected(true, '');
      } catch (error) {
        // A bug of this page, not a lost connection: say so where tests look.
        console.error('Cannot render /status', error);
        setConnected(false, 'cannot show this status: ' + error);
      }
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
