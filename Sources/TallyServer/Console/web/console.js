// Tally's web console (docs/console.md). Every action is a System API call made with the access
// token the user signed in with: kept in sessionStorage (this tab's), sent as the
// Authorization header, never put in a URL. Money arrives as integer quota units and is only
// formatted here (500,000 units = 1 USD, exact, with BigInt): the page computes no balance.
(function () {
  'use strict';

  const TOKEN_KEY = 'tally.console.token';
  const PAGE_SIZE = 10;
  const $ = (id) => document.getElementById(id);

  /** What the page remembers of the signed-in session; reset on sign-out. */
  function freshState() {
    return {
      token: null,
      user: null,
      usageMonth: currentMonth(),
      keysPage: 1,
      logsPage: 1,
      logsTid: '',
      usersPage: 1,
      usersKeyword: '',
      detailUser: null,
      detailKeysPage: 1,
      statementMonth: currentMonth(),
      topUpKey: '',
      channelsPage: 1,
      pricing: null,
      keyGroups: [],
      keyBeingEdited: null,
    };
  }

  let state = freshState();

  // ---------------------------------------------------------------- formatting

  /** Units as text with thousands separators, exactly (BigInt). */
  function formatUnits(units) {
    const text = BigInt(units).toString();
    const negative = text.startsWith('-');
    const digits = negative ? text.slice(1) : text;
    return (negative ? '-' : '') + digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }

  /** Units as USD with 6 decimals, exactly as the server's Money.formatUSD: 1 unit = 2 micro-USD. */
  function formatUSD(units) {
    const micros = BigInt(units) * 2n;
    const magnitude = micros < 0n ? -micros : micros;
    const whole = (magnitude / 1000000n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
    const fraction = (magnitude % 1000000n).toString().padStart(6, '0');
    return (micros < 0n ? '-$' : '$') + whole + '.' + fraction;
  }

  /** USD for an axis label: as formatUSD, without the trailing zeros past the cents. */
  function axisUSD(units) {
    return formatUSD(units).replace(/(\.\d\d\d*?)0+$/, '$1');
  }

  function formatTime(unixSeconds) {
    if (!unixSeconds || unixSeconds <= 0) return '';
    return new Date(unixSeconds * 1000).toISOString().replace('T', ' ').slice(0, 19);
  }

  /** `YYYY-MM-DDTHH:MM:SS` of a unix time in the browser's zone (the zone itself not written). */
  function localISOTime(unixSeconds) {
    const date = new Date(unixSeconds * 1000);
    return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  }

  /** As formatTime, in the browser's zone: the zone the key form's expiry field takes. */
  function formatLocalTime(unixSeconds) {
    if (!unixSeconds || unixSeconds <= 0) return '';
    return localISOTime(unixSeconds).replace('T', ' ');
  }

  function currentMonth() {
    return new Date().toISOString().slice(0, 7);
  }

  function shiftMonth(month, delta) {
    const [year, number] = month.split('-').map(Number);
    const date = new Date(Date.UTC(year, number - 1 + delta, 1));
    return date.toISOString().slice(0, 7);
  }

  function daysInMonth(month) {
    const [year, number] = month.split('-').map(Number);
    return new Date(Date.UTC(year, number, 0)).getUTCDate();
  }

  const KEY_STATUS = { 1: 'Enabled', 2: 'Disabled', 3: 'Expired', 4: 'Exhausted' };
  const USER_STATUS = { 1: 'Enabled', 2: 'Suspended' };
  const ROLES = { 1: 'user', 10: 'admin', 100: 'root' };
  const LOG_TYPES = { 1: 'Top-up', 2: 'Request', 3: 'Adjustment', 4: 'System', 5: 'Error', 6: 'Refund' };

  // ---------------------------------------------------------------- DOM helpers

  /** An element with attributes (`text` sets textContent) and children; never parses HTML. */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'text') node.textContent = value;
      else if (name === 'className') node.className = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function cell(text, className) {
    return el('td', { text: text === undefined || text === null ? '' : String(text), className });
  }

  function numberCell(text) {
    return cell(text, 'num');
  }

  function fillTable(tableId, rows, emptyText) {
    const body = $(tableId).tBodies[0];
    const columns = $(tableId).tHead.rows[0].cells.length;
    body.replaceChildren(...rows);
    if (rows.length === 0) {
      body.append(el('tr', { className: 'empty' }, el('td', { colspan: String(columns), text: emptyText })));
    }
  }

  /** A copy button: the Clipboard API where the page is a secure context, else the selection. */
  function copyButton(text, label) {
    return el('button', {
      type: 'button', className: 'copy small', text: 'Copy', 'aria-label': label,
      onclick: (event) => copyText(text, event.currentTarget),
    });
  }

  async function copyText(text, button) {
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        copied = true;
      } catch (_) { /* fall back below */ }
    }
    if (!copied) {
      const scratch = el('textarea', { readonly: true, className: 'offscreen', 'aria-hidden': 'true' });
      scratch.value = text;
      document.body.append(scratch);
      scratch.select();
      copied = document.execCommand('copy');
      scratch.remove();
    }
    const before = button.textContent;
    button.textContent = copied ? 'Copied' : 'Select and copy';
    setTimeout(() => { button.textContent = before; }, 1500);
  }

  function pager(containerId, page, total, onPage) {
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    const container = $(containerId);
    container.replaceChildren(
      el('button', { type: 'button', className: 'secondary small', text: '‹ Previous', disabled: page <= 1,
        onclick: () => onPage(page - 1) }),
      el('span', { text: `Page ${page} of ${pages} (${total})` }),
      el('button', { type: 'button', className: 'secondary small', text: 'Next ›', disabled: page >= pages,
        onclick: () => onPage(page + 1) }));
  }

  // ---------------------------------------------------------------- messages

  /** Shows an API error as the API gave it: message, code, HTTP status and the tid, copyable. */
  function showError(error) {
    $('error-message').textContent = error.message;
    $('error-code').textContent = error.code || 'unknown';
    $('error-status').textContent = error.status ? String(error.status) : '—';
    $('error-tid').textContent = error.tid || '—';
    $('error-tid-copy').hidden = !error.tid;
    $('error').hidden = false;
    $('status').textContent = '';
  }

  function clearError() {
    $('error').hidden = true;
  }

  function say(text) {
    clearError();
    $('status').textContent = text;
  }

  /** Runs an action; an API error is shown (replacing the last one), anything else as a console failure. */
  async function attempt(action) {
    clearError();
    try {
      return await action();
    } catch (error) {
      showError(error instanceof ApiError ? error : new ApiError(0, 'console_error', String(error), ''));
      if (error instanceof ApiError && error.status === 401 && state.token) signOut(false);
      return undefined;
    }
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, code, message, tid) {
      super(message);
      this.status = status;
      this.code = code;
      this.tid = tid;
    }
  }

  function query(parameters) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(parameters || {})) {
      if (value !== undefined && value !== null && value !== '') search.set(name, String(value));
    }
    const text = search.toString();
    return text ? '?' + text : '';
  }

  async function send(method, path, { body, token = state.token } = {}) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store', credentials: 'omit', redirect: 'error',
      });
    } catch (error) {
      throw new ApiError(0, 'network_error', 'Tally could not be reached: ' + error.message, '');
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /** The catalog error of a failed answer, in either envelope, with its tid. */
  async function errorOf(response) {
    const tid = response.headers.get('X-Tid') || '';
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    const error = body && (body.error || body);
    if (error && typeof error.message === 'string') {
      return new ApiError(response.status, error.code || '', error.message, error.tid || tid);
    }
    return new ApiError(response.status, 'http_error', `HTTP ${response.status}`, tid);
  }

  /** A System API call answering `{success, message, data}`; resolves to the answer and its data. */
  async function api(method, path, options) {
    const response = await send(method, path, options);
    const body = await response.json();
    if (body.success === false) {
      throw new ApiError(response.status, body.code || '', body.message, body.tid || response.headers.get('X-Tid'));
    }
    return { data: body.data, response };
  }

  /** A JSON Lines export, as objects. */
  async function jsonLines(path) {
    const text = await (await send('GET', path)).text();
    return text.split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line));
  }

  /** Downloads an export through fetch (the token stays in the header) as a file. */
  async function download(path, fallbackName) {
    const response = await send('GET', path);
    const disposition = response.headers.get('Content-Disposition') || '';
    const match = /filename="([^"]+)"/.exec(disposition);
    const name = match ? match[1] : fallbackName;
    const url = URL.createObjectURL(await response.blob());
    const link = el('a', { href: url, download: name, className: 'offscreen' });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say(`Downloaded ${name}.`);
  }

  // ---------------------------------------------------------------- sign-in and navigation

  async function signIn(token) {
    const { data: user } = await api('GET', '/api/user/self', { token });
    state.token = token;
    state.user = user;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('who-name').textContent = user.display_name || user.username;
    $('who-role').textContent = `(${ROLES[user.role] || 'role ' + user.role})`;
    $('who').hidden = false;
    $('sign-out').hidden = false;
    $('nav').hidden = false;
    document.body.classList.toggle('is-admin', isAdmin());
    clearError();
    if (!location.hash || location.hash === '#signin') location.hash = '#overview';
    else showView();
  }

  function isAdmin() {
    return state.user !== null && state.user.role >= 10;
  }

  /** Forgets the token and everything the session showed, so the next person sees none of it. */
  function signOut(announce = true) {
    sessionStorage.removeItem(TOKEN_KEY);
    state = freshState();
    for (const id of ['who', 'sign-out', 'nav', 'new-key', 'user-detail']) $(id).hidden = true;
    document.body.classList.remove('is-admin');
    for (const form of document.querySelectorAll('form')) form.reset();
    $('new-key-value').value = '';
    for (const table of document.querySelectorAll('table tbody')) table.replaceChildren();
    for (const node of document.querySelectorAll('.amount, .units, output, .pager, .result, #usage-total, ' +
      '#prices-in-force, #topup-key, #who-name, #who-role')) node.replaceChildren();
    const chart = window.Chart && Chart.getChart($('usage-chart'));
    if (chart) chart.destroy();
    resetKeyForm();
    if (announce) say('Signed out.');
    history.replaceState(null, '', location.pathname);
    showView();
  }

  const VIEWS = {
    overview: { load: loadOverview },
    keys: { load: loadKeys },
    logs: { load: loadLogs },
    users: { load: loadUsers, admin: true },
    channels: { load: loadChannels, admin: true },
    prices: { load: loadPrices, admin: true },
    export: { load: prepareExport, admin: true },
  };

  function showView() {
    let name = location.hash.slice(1);
    if (!state.user) name = 'signin';
    // Own keys only: a link to #constructor must not reach Object's.
    else if (!Object.hasOwn(VIEWS, name) || (VIEWS[name].admin && !isAdmin())) name = 'overview';
    for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== 'view-' + name;
    for (const link of document.querySelectorAll('#nav a')) {
      if (link.getAttribute('href') === '#' + name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (name === 'signin') {
      $('signin-token').focus();
      return;
    }
    attempt(VIEWS[name].load);
  }

  // ---------------------------------------------------------------- overview

  async function loadOverview() {
    const { data: user } = await api('GET', '/api/user/self');
    state.user = user;
    $('balance-usd').textContent = formatUSD(user.quota);
    $('balance-units').textContent = formatUnits(user.quota) + ' units';
    $('used-usd').textContent = formatUSD(user.used_quota);
    $('used-units').textContent = formatUnits(user.used_quota) + ' units';
    $('request-count').textContent = formatUnits(user.request_count);
    await loadUsage();
  }

  async function loadUsage() {
    const month = state.usageMonth;
    $('usage-month').textContent = month;
    $('usage-next').disabled = month >= currentMonth();
    const [days, models] = await Promise.all([
      jsonLines('/api/usage/self' + query({ month, by: 'day', format: 'jsonl' })),
      jsonLines('/api/usage/self' + query({ month, by: 'model', format: 'jsonl' })),
    ]);
    if (month !== state.usageMonth) return; // a newer month was asked for meanwhile
    drawUsageChart(month, days);
    fillTable('usage-days', days.map((row) => el('tr', {}, cell(row.day), numberCell(formatUnits(row.requests)),
      numberCell(formatUnits(row.quota)), numberCell('$' + row.usd))), 'No usage this month.');
    fillTable('usage-models', models.map((row) => el('tr', {}, cell(row.model),
      numberCell(formatUnits(row.requests)), numberCell(formatUnits(row.prompt_tokens)),
      numberCell(formatUnits(row.completion_tokens)), numberCell(formatUnits(row.quota)),
      numberCell('$' + row.usd))), 'No usage this month.');
    const total = days.reduce((sum, row) => sum + BigInt(row.quota), 0n);
    $('usage-total').textContent = `${formatUSD(total)} (${formatUnits(total)} units)`;
  }

  /** One bar per day of the month: the quota of the export's row for that day, else 0. */
  function drawUsageChart(month, days) {
    const byDay = new Map(days.map((row) => [row.day, row.quota]));
    const labels = [];
    const values = [];
    for (let day = 1; day <= daysInMonth(month); day++) {
      const date = `${month}-${String(day).padStart(2, '0')}`;
      labels.push(date);
      values.push(byDay.get(date) || 0);
    }
    const canvas = $('usage-chart');
    const existing = window.Chart && Chart.getChart(canvas);
    if (existing) existing.destroy();
    if (!window.Chart) return; // the table below still has every figure
    new Chart(canvas, {
      type: 'bar',
      data: { labels, datasets: [{ label: 'Quota used', data: values, backgroundColor: '#2f6fde' }] },
      options: {
        maintainAspectRatio: false,
        animation: false,
        scales: {
          x: { ticks: { callback: (_, index) => String(index + 1), autoSkip: true, maxRotation: 0 } },
          y: { beginAtZero: true, ticks: { precision: 0, callback: (value) => axisUSD(Math.round(value)) } },
        },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              title: (items) => items[0].label,
              label: (item) => `${formatUSD(item.raw)} (${formatUnits(item.raw)} units)`,
            },
          },
        },
      },
    });
  }

  // ---------------------------------------------------------------- API keys

  async function loadKeys() {
    const [{ data: page }, { data: groups }, { data: models }] = await Promise.all([
      api('GET', '/api/token/' + query({ p: state.keysPage, page_size: PAGE_SIZE })),
      api('GET', '/api/group'),
      api('GET', '/api/user/models'),
    ]);
    state.keyGroups = groups;
    fillKeyGroups();
    $('model-names').replaceChildren(...models.map((name) => el('option', { value: name })));
    fillTable('keys-table', page.items.map(keyRow), 'No API keys yet.');
    pager('keys-pager', page.page, page.total, (next) => { state.keysPage = next; attempt(loadKeys); });
  }

  /**
   * The key form's groups: the account's own, those /api/group offers and, while a key is edited,
   * that key's group when it is no longer offered (made non-selectable since), so the form shows
   * the group the key has, not one it would be moved to.
   */
  function fillKeyGroups() {
    const select = $('key-group');
    const chosen = select.value;
    const groups = state.keyGroups;
    const edited = state.keyBeingEdited;
    const kept = edited && edited.key.group && !groups.includes(edited.key.group) ? edited.key.group : null;
    const options = [el('option', { value: '', text: "The account's group" }),
      ...groups.map((name) => el('option', { value: name, text: name }))];
    if (kept) options.push(el('option', { value: kept, text: `${kept} (this key's; no longer offered)` }));
    select.replaceChildren(...options);
    select.value = groups.includes(chosen) || chosen === kept ? chosen : '';
  }

  function remaining(key) {
    return key.unlimited_quota ? 'Unlimited' : formatUSD(key.remain_quota);
  }

  function expiry(key) {
    return key.expired_time === -1 ? 'Never' : formatLocalTime(key.expired_time);
  }

  function keyRow(key) {
    const enabled = key.status === 1;
    const toggle = el('button', {
      type: 'button', className: 'secondary small', text: enabled ? 'Disable' : 'Enable',
      'aria-label': `${enabled ? 'Disable' : 'Enable'} key ${key.name}`,
      onclick: () => attempt(() => setKeyStatus(key, enabled ? 2 : 1)),
    });
    return el('tr', { 'data-key-id': String(key.id) },
      cell(key.name), el('td', {}, el('code', { text: key.key })), cell(KEY_STATUS[key.status] || key.status, 'status'),
      numberCell(remaining(key)), numberCell(formatUSD(key.used_quota)), cell(expiry(key), 'time'),
      cell(key.group || '—'),
      cell(key.model_limits_enabled ? key.model_limits.split(',').join(', ') : 'All'),
      cell(key.allow_ips ? key.allow_ips.split('\n').join(', ') : 'Any'),
      el('td', {}, el('div', { className: 'row-actions' },
        el('button', { type: 'button', className: 'secondary small', text: 'Edit', 'aria-label': `Edit key ${key.name}`,
          onclick: () => editKey(key) }),
        toggle,
        el('button', { type: 'button', className: 'danger small', text: 'Delete',
          'aria-label': `Delete key ${key.name}`, onclick: () => attempt(() => deleteKey(key)) }))));
  }

  async function setKeyStatus(key, status) {
    await api('PUT', '/api/token/?status_only=1', { body: { id: key.id, status } });
    say(`Key ${key.name} ${status === 1 ? 'enabled' : 'disabled'}.`);
    await loadKeys();
  }

  async function deleteKey(key) {
    if (!window.confirm(`Delete key ${key.name}? Requests with it stop at once; its logs stay.`)) return;
    await api('DELETE', `/api/token/${key.id}`);
    say(`Key ${key.name} deleted.`);
    await loadKeys();
  }

  /** `datetime-local` text of a unix time, in the browser's zone. */
  function localInputTime(unixSeconds) {
    return localISOTime(unixSeconds).slice(0, 16);
  }

  function editKey(key) {
    state.keyBeingEdited = { key, expiryText: key.expired_time === -1 ? '' : localInputTime(key.expired_time) };
    $('key-form-title').textContent = `Edit key ${key.name}`;
    $('key-submit').textContent = 'Save changes';
    $('key-cancel').hidden = false;
    $('key-name').value = key.name;
    fillKeyGroups();
    $('key-group').value = key.group;
    $('key-unlimited').checked = key.unlimited_quota;
    $('key-quota').value = String(key.remain_quota);
    $('key-expiry').value = state.keyBeingEdited.expiryText;
    $('key-models-on').checked = key.model_limits_enabled;
    $('key-models').value = key.model_limits;
    $('key-ips').value = key.allow_ips;
    syncKeyQuota();
    $('key-name').focus();
  }

  function resetKeyForm() {
    state.keyBeingEdited = null;
    $('key-form').reset();
    fillKeyGroups(); // without the edited key's group, when it was no longer offered
    $('key-form-title').textContent = 'Create a key';
    $('key-submit').textContent = 'Create key';
    $('key-cancel').hidden = true;
    syncKeyQuota();
  }

  function syncKeyQuota() {
    const unlimited = $('key-unlimited').checked;
    $('key-quota').disabled = unlimited;
    const units = $('key-quota').value;
    $('key-quota-usd').textContent = unlimited || !/^\d+$/.test(units) ? '' : '= ' + formatUSD(units);
  }

  /** The form as new-api's token fields; an unchanged expiry is sent back exactly as stored. */
  function keyFields() {
    const edited = state.keyBeingEdited;
    const expiryText = $('key-expiry').value;
    let expiredTime = -1;
    if (edited && expiryText === edited.expiryText) expiredTime = edited.key.expired_time;
    else if (expiryText) expiredTime = Math.floor(new Date(expiryText).getTime() / 1000);
    const quotaText = $('key-quota').value.trim();
    const fields = {
      name: $('key-name').value.trim(),
      group: $('key-group').value,
      unlimited_quota: $('key-unlimited').checked,
      remain_quota: /^\d+$/.test(quotaText) ? Number(quotaText) : 0,
      expired_time: expiredTime,
      model_limits_enabled: $('key-models-on').checked,
      model_limits: $('key-models').value.trim(),
      allow_ips: $('key-ips').value.trim(),
    };
    // An edit sends the quota only when the owner changed it: sent back as the form loaded it,
    // it undid whatever the key spent while the form was open (and forgave an overrun).
    if (edited && quotaText === String(edited.key.remain_quota)) delete fields.remain_quota;
    if (edited && fields.unlimited_quota === edited.key.unlimited_quota) delete fields.unlimited_quota;
    // The group likewise: a rename never moves the key, even to the account's group ("") when
    // the key's group is no longer offered and the select could not show it.
    if (edited && fields.group === edited.key.group) delete fields.group;
    return fields;
  }

  async function submitKey() {
    const fields = keyFields();
    const edited = state.keyBeingEdited;
    if (edited) {
      await api('PUT', '/api/token/', { body: { id: edited.key.id, ...fields } });
      say(`Key ${fields.name} saved.`);
    } else {
      const { data: created } = await api('POST', '/api/token/', { body: fields });
      $('new-key-value').value = created.key;
      $('new-key').hidden = false;
      $('new-key-value').focus();
      $('new-key-value').select();
      say(`Key ${created.name} created. Copy it now: it is shown only once.`);
    }
    resetKeyForm();
    await loadKeys();
  }

  // ---------------------------------------------------------------- logs

  async function loadLogs() {
    const { data: page } = await api('GET', '/api/log/self' +
      query({ p: state.logsPage, page_size: PAGE_SIZE, tid: state.logsTid }));
    fillTable('logs-table', page.items.map(logRow),
      state.logsTid ? `No request was logged under tid ${state.logsTid}.` : 'No log rows yet.');
    pager('logs-pager', page.page, page.total, (next) => { state.logsPage = next; attempt(loadLogs); });
  }

  function logRow(row) {
    let other = {};
    try { other = JSON.parse(row.other || '{}') || {}; } catch (_) { /* not JSON: no details */ }
    const tid = other.tid || '';
    const tokens = row.type === 2 || row.type === 5
      ? `${formatUnits(row.prompt_tokens)} / ${formatUnits(row.completion_tokens)}` : '';
    return el('tr', { 'data-tid': tid },
      cell(formatTime(row.created_at), 'time'), cell(LOG_TYPES[row.type] || row.type),
      cell(row.model_name || row.content),
      cell(row.token_name), numberCell(tokens), numberCell(formatUSD(row.quota)),
      numberCell(other.status_code || ''),
      el('td', { className: 'tid' }, tid ? el('code', { text: tid }) : '',
        tid ? copyButton(tid, 'Copy tid ' + tid) : ''));
  }

  // ---------------------------------------------------------------- admin: users

  async function loadUsers() {
    const { data: page } = await api('GET', '/api/user/' +
      query({ p: state.usersPage, page_size: PAGE_SIZE, keyword: state.usersKeyword }));
    fillTable('users-table', page.items.map((user) => el('tr', { 'data-user-id': String(user.id) },
      numberCell(user.id), cell(user.username), cell(user.group), cell(ROLES[user.role] || user.role),
      cell(USER_STATUS[user.status] || user.status, 'status'), numberCell(formatUSD(user.quota)),
      numberCell(formatUnits(user.request_count)),
      el('td', {}, el('button', { type: 'button', className: 'secondary small', text: 'Open',
        'aria-label': `Open user ${user.username}`, onclick: () => attempt(() => openUser(user.id)) })))),
    'No user matches.');
    pager('users-pager', page.page, page.total, (next) => { state.usersPage = next; attempt(loadUsers); });
    if (state.detailUser) await refreshUser();
  }

  async function openUser(id) {
    const { data: user } = await api('GET', `/api/user/${id}`);
    state.detailUser = user;
    state.detailKeysPage = 1;
    $('topup-form').reset();
    $('topup-result').textContent = '';
    newTopUpKey();
    showUser(user);
    $('user-detail').hidden = false;
    $('user-title').focus();
    await Promise.all([loadUserKeys(), loadStatement()]);
  }

  async function refreshUser() {
    const { data: user } = await api('GET', `/api/user/${state.detailUser.id}`);
    state.detailUser = user;
    showUser(user);
  }

  function showUser(user) {
    $('ud-name').textContent = `${user.username} (id ${user.id})`;
    $('ud-balance-usd').textContent = formatUSD(user.quota);
    $('ud-balance-units').textContent = formatUnits(user.quota) + ' units';
    $('ud-used-usd').textContent = formatUSD(user.used_quota);
    $('ud-used-units').textContent = formatUnits(user.used_quota) + ' units';
    $('ud-requests').textContent = formatUnits(user.request_count);
    $('ud-status').textContent = USER_STATUS[user.status] || String(user.status);
    const suspended = user.status !== 1;
    $('ud-suspend').textContent = suspended ? 'Enable' : 'Suspend';
    $('ud-suspend').className = suspended ? '' : 'danger';
    const row = document.querySelector(`#users-table tr[data-user-id="${user.id}"]`);
    if (row) {
      row.querySelector('.status').textContent = USER_STATUS[user.status] || String(user.status);
      row.cells[5].textContent = formatUSD(user.quota);
    }
  }

  async function toggleSuspension() {
    const user = state.detailUser;
    const action = user.status === 1 ? 'disable' : 'enable';
    const warning = `Suspend ${user.username}? Every access token and API key of the account stops working.`;
    if (action === 'disable' && !window.confirm(warning)) return;
    await api('POST', '/api/user/manage', { body: { id: user.id, action } });
    await refreshUser();
    say(`${user.username} ${action === 'disable' ? 'suspended' : 'enabled'}.`);
  }

  /** A fresh idempotency key: 128 random bits (crypto.getRandomValues works without HTTPS too). */
  function newTopUpKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    state.topUpKey = 'console-' + Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
    $('topup-key').textContent = state.topUpKey;
  }

  async function submitTopUp() {
    const amountText = $('topup-amount').value.trim();
    if (!/^[1-9]\d*$/.test(amountText)) {
      showError(new ApiError(0, 'invalid_request', 'amount must be a positive whole number of quota units', ''));
      return;
    }
    const user = state.detailUser;
    const { data: result, response } = await api('POST', '/api/admin/topups', {
      body: {
        user_id: user.id, amount: Number(amountText), reason: $('topup-reason').value,
        idempotency_key: state.topUpKey,
      },
    });
    const replayed = response.headers.get('Idempotent-Replayed') === 'true';
    $('topup-result').textContent = replayed
      ? `Already credited: top-up ${result.id} used this idempotency key, so nothing was credited again. ` +
        `Balance then: ${formatUSD(result.quota)}.`
      : `Credited ${formatUSD(result.amount)} (${formatUnits(result.amount)} units) as top-up ${result.id}. ` +
        `Balance: ${formatUSD(result.quota)}.`;
    $('topup-result').dataset.replayed = String(replayed);
    clearError();
    await refreshUser();
    await loadStatement();
  }

  async function loadUserKeys() {
    const user = state.detailUser;
    const { data: page } = await api('GET', `/api/admin/users/${user.id}/tokens` +
      query({ p: state.detailKeysPage, page_size: PAGE_SIZE }));
    fillTable('ud-keys', page.items.map((key) => el('tr', {}, cell(key.name),
      el('td', {}, el('code', { text: key.key })),
      cell(KEY_STATUS[key.status] || key.status), numberCell(remaining(key)), numberCell(formatUSD(key.used_quota)),
      cell(expiry(key)), cell(key.group || '—'))), 'No API keys.');
    pager('ud-keys-pager', page.page, page.total, (next) => { state.detailKeysPage = next; attempt(loadUserKeys); });
  }

  async function loadStatement() {
    const month = state.statementMonth;
    $('statement-month').textContent = month;
    $('statement-next').disabled = month >= currentMonth();
    const { data: statement } = await api('GET', `/api/admin/statements/${state.detailUser.id}/${month}`);
    $('st-opening').textContent = '$' + statement.opening_balance_usd;
    $('st-credits').textContent = '$' + statement.total_credits_usd;
    $('st-charges').textContent = '$' + statement.charges_usd;
    $('st-closing').textContent = '$' + statement.closing_balance_usd;
    fillTable('st-models', statement.charges_by_model.map((row) => el('tr', {}, cell(row.model),
      numberCell(formatUnits(row.requests)), numberCell(formatUnits(row.quota)), numberCell('$' + row.usd))),
    'No charges this month.');
    fillTable('st-credits-table', statement.credits.map((row) => el('tr', {}, cell(formatTime(row.at)), cell(row.kind),
      cell(row.reason), numberCell(formatUnits(row.amount)), numberCell('$' + row.amount_usd))),
    'No credits this month.');
  }

  // ---------------------------------------------------------------- admin: channels, groups, prices, export

  async function loadChannels() {
    const [{ data: page }, { data: groups }] = await Promise.all([
      api('GET', '/api/channel/' + query({ p: state.channelsPage, page_size: PAGE_SIZE })),
      api('GET', '/api/admin/groups'),
    ]);
    fillTable('channels-table', page.items.map((channel) => el('tr', {}, numberCell(channel.id), cell(channel.name),
      cell(channel.status === 1 ? 'Enabled' : 'Disabled'), cell(channel.group.split(',').join(', ')),
      cell(channel.models.split(',').join(', ')), numberCell(formatUSD(channel.used_quota)))), 'No channels.');
    pager('channels-pager', page.page, page.total, (next) => { state.channelsPage = next; attempt(loadChannels); });
    fillTable('groups-table', groups.map((group) => el('tr', {}, cell(group.name), cell(group.description),
      cell(group.selectable ? 'Yes' : 'No'),
      numberCell(group.rpm_limit === null ? 'No limit' : formatUnits(group.rpm_limit)))),
    'No groups.');
  }

  async function loadPrices() {
    const [{ data: pricing }, { data: versions }] = await Promise.all([
      api('GET', '/api/pricing'), api('GET', '/api/admin/prices'),
    ]);
    state.pricing = pricing;
    $('prices-in-force').textContent = pricing.price_version_id === null || pricing.price_version_id === undefined
      ? 'No price version is in force: nothing can be priced.'
      : `Price version ${pricing.price_version_id} is in force, effective from ${pricing.effective_from}.`;
    const select = $('prices-group');
    const chosen = select.value;
    const names = pricing.groups.map((group) => group.name);
    select.replaceChildren(...names.map((name) => el('option', { value: name, text: name })));
    select.value = names.includes(chosen) ? chosen : (names.includes('default') ? 'default' : names[0] || '');
    showPrices();
    fillTable('price-groups-table', pricing.groups.map((group) => el('tr', {}, cell(group.name),
      numberCell(group.ratio), cell(group.description))), 'No groups.');
    fillTable('versions-table', versions.slice().reverse().map((version) => el('tr', {}, numberCell(version.id),
      cell(version.effective_from), numberCell(version.models), numberCell(version.groups), cell(version.source),
      cell(version.loaded_by), cell(version.loaded_at),
      el('td', {}, el('code', { text: version.sha256.slice(0, 12) })))),
    'No price versions.');
  }

  function showPrices() {
    const group = $('prices-group').value;
    const rows = [];
    for (const model of (state.pricing ? state.pricing.models : [])) {
      const prices = Object.hasOwn(model.prices, group) ? model.prices[group] : null;
      if (!prices) continue;
      const others = Object.keys(prices).filter((field) => field !== 'input' && field !== 'output').sort()
        .map((field) => `${field} ${prices[field]}`).join('; ');
      rows.push(el('tr', {}, cell(model.model), cell(model.kind || ''), numberCell(prices.input || ''),
        numberCell(prices.output || ''), cell(others)));
    }
    fillTable('prices-table', rows, 'The group has no priced models.');
  }

  async function prepareExport() {
    if (!$('export-month').value) $('export-month').value = currentMonth();
  }

  async function submitExport() {
    const month = $('export-month').value.trim();
    if (!/^\d{4}-\d{2}$/.test(month)) {
      showError(new ApiError(0, 'invalid_request', 'month must be YYYY-MM', ''));
      return;
    }
    const by = $('export-by').value;
    const format = $('export-format').value;
    await download('/api/admin/exports/usage' + query({ month, by, format }),
      `usage-${month}-${by.replace(',', '-')}.${format}`);
  }

  // ---------------------------------------------------------------- wiring

  function onSubmit(formId, action) {
    $(formId).addEventListener('submit', (event) => {
      event.preventDefault();
      attempt(action);
    });
  }

  function wire() {
    onSubmit('signin-form', async () => {
      const token = $('signin-token').value.trim();
      if (!token) {
        showError(new ApiError(0, 'missing_token', 'Paste your access token first.', ''));
        return;
      }
      await signIn(token);
      $('signin-token').value = '';
    });
    $('sign-out').addEventListener('click', () => signOut());
    $('error-close').addEventListener('click', clearError);
    $('error-tid-copy').addEventListener('click', (event) => copyText($('error-tid').textContent, event.currentTarget));
    window.addEventListener('hashchange', () => { say(''); showView(); });

    for (const [id, delta] of [['usage-prev', -1], ['usage-next', 1]]) {
      $(id).addEventListener('click', () => {
        state.usageMonth = shiftMonth(state.usageMonth, delta);
        attempt(loadUsage);
      });
    }
    $('usage-csv').addEventListener('click', () => attempt(() => download(
      '/api/usage/self' + query({ month: state.usageMonth, by: 'day,model', format: 'csv' }),
      `usage-${state.usageMonth}.csv`)));

    onSubmit('key-form', submitKey);
    $('key-cancel').addEventListener('click', resetKeyForm);
    $('key-unlimited').addEventListener('change', syncKeyQuota);
    $('key-quota').addEventListener('input', syncKeyQuota);
    $('new-key-copy').addEventListener('click', (event) => copyText($('new-key-value').value, event.currentTarget));
    $('new-key-done').addEventListener('click', () => {
      $('new-key-value').value = '';
      $('new-key').hidden = true;
      $('keys-title').focus();
    });

    onSubmit('logs-search', async () => {
      const tid = $('logs-tid').value.trim().toLowerCase();
      if (tid && !/^[0-9a-f]{32}$/.test(tid)) {
        showError(new ApiError(0, 'invalid_request', 'A tid is 32 hexadecimal characters.', ''));
        return;
      }
      state.logsTid = tid;
      state.logsPage = 1;
      await loadLogs();
    });
    $('logs-all').addEventListener('click', () => {
      $('logs-tid').value = '';
      state.logsTid = '';
      state.logsPage = 1;
      attempt(loadLogs);
    });

    onSubmit('users-search', async () => {
      state.usersKeyword = $('users-keyword').value.trim();
      state.usersPage = 1;
      await loadUsers();
    });
    $('ud-suspend').addEventListener('click', () => attempt(toggleSuspension));
    onSubmit('topup-form', submitTopUp);
    $('topup-new-key').addEventListener('click', newTopUpKey);
    for (const id of ['topup-amount', 'topup-reason']) $(id).addEventListener('input', newTopUpKey);
    $('topup-amount').addEventListener('input', () => {
      const units = $('topup-amount').value;
      $('topup-usd').textContent = /^\d+$/.test(units) ? '= ' + formatUSD(units) : '';
    });
    $('statement-prev').addEventListener('click', () => {
      state.statementMonth = shiftMonth(state.statementMonth, -1);
      attempt(loadStatement);
    });
    $('statement-next').addEventListener('click', () => {
      state.statementMonth = shiftMonth(state.statementMonth, 1);
      attempt(loadStatement);
    });

    $('prices-group').addEventListener('change', showPrices);
    onSubmit('export-form', submitExport);
  }

  function start() {
    wire();
    syncKeyQuota();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      resume(saved);
    } else {
      showView();
    }
  }

  /**
   * Signs in again with the tab's saved token after a reload. Only a token the server refused
   * (401, or a suspended account) is forgotten: after a network error, a 503 or a 429 it stays
   * for the next reload, since a token is shown once and getting a new one rotates it.
   */
  async function resume(saved) {
    try {
      await signIn(saved);
    } catch (error) {
      const apiError = error instanceof ApiError ? error : new ApiError(0, 'console_error', String(error), '');
      if (apiError.status === 401 || apiError.code === 'account_suspended') signOut(false);
      else showView();
      showError(apiError);
    }
  }

  start();
}());
