// The merchant's operators' page (web/operator_page.py): the board polled every second
// from GET /v1/operator/board (advisors, consultations talking, the queue, lines), and
// the buttons that send the API's own controls under /v1/operator/... with the session's
// CSRF token in X-CSRF-Token. A refused action shows the text of its error id.
'use strict';

(function () {
  const root = document.getElementById('operator-page');
  if (!root) {
    return;
  }
  const data = root.dataset;
  const status = document.getElementById('operator-status');
  const PRESENCES = [['online', 'tSetStandby'], ['break', 'tSetBreak'],
                     ['offline', 'tSetOffline']];
  const picked = new Map();      // consultation id -> advisor id picked for a transfer
  let shown = '';
  let timer = null;

  function camel(name) {
    return name.split(/[-_]/).map((part, i) => i === 0 ? part
      : part.charAt(0).toUpperCase() + part.slice(1)).join('');
  }

  function t(name) {
    return data[camel('t-' + name)] || name;
  }

  function when(iso) {
    return new Date(iso).toLocaleTimeString(data.lang === 'ja' ? 'ja-JP' : 'en-GB');
  }

  function cell(row, content) {
    const td = document.createElement('td');
    if (typeof content === 'string') {
      td.textContent = content;
    } else {
      for (const node of content) {
        td.appendChild(node);
      }
    }
    row.appendChild(td);
    return td;
  }

  function button(text, className, action) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = className;
    b.textContent = text;
    b.addEventListener('click', action);
    return b;
  }

  function signedOut() {
    window.clearInterval(timer);
    window.location.assign(data.signedOutUrl);
  }

  async function send(url, method, body) {
    const response = await fetch(url, {
      method: method, credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'X-CSRF-Token': data.csrf},
      body: body === undefined ? undefined : JSON.stringify(body)});
    if (response.status === 401) {
      signedOut();
      return null;
    }
    let reply = null;
    try {
      reply = await response.json();
    } catch (err) {
      reply = null;
    }
    return {ok: response.ok, reply: reply};
  }

  async function act(url, method, body) {
    status.textContent = '';
    status.className = '';
    let answer = null;
    try {
      answer = await send(url, method, body);
    } catch (err) {
      answer = {ok: false, reply: null};
    }
    if (answer === null) {
      return;
    }
    if (answer.ok) {
      status.textContent = t('done');
      status.className = 'done';
    } else {
      const id = answer.reply && answer.reply.error ? answer.reply.error.id : 'other';
      const known = data[camel('t-refused-' + id)];
      status.textContent = known || t('refused-other');
      status.className = 'error';
      status.dataset.error = id;
    }
    await refresh();
  }

  function control(cid, path, body) {
    return () => act('/v1/operator/consultations/' + encodeURIComponent(cid) + '/' + path,
                     'POST', body);
  }

  function stateLabel(state) {
    return data[camel('state-' + state)] || state;
  }

  function renderAdvisors(board) {
    const body = document.querySelector('#advisors tbody');
    body.replaceChildren();
    for (const a of board.advisors) {
      const row = document.createElement('tr');
      row.dataset.advisorId = a.advisor_id;
      row.dataset.state = a.state;
      cell(row, a.display_name);
      cell(row, stateLabel(a.state)).className = 'state';
      cell(row, when(a.since));
      cell(row, PRESENCES.map(([presence, label]) => {
        const b = button(data[label], 'set-presence', () => act(
          '/v1/operator/advisors/' + a.advisor_id + '/presence', 'PUT',
          {presence: presence}));
        b.dataset.presence = presence;
        return b;
      }));
      body.appendChild(row);
    }
  }

  function transferPicker(c, advisors) {
    const select = document.createElement('select');
    select.className = 'transfer-to';
    select.setAttribute('aria-label', t('transfer-to'));
    for (const a of advisors) {
      if (a.advisor_id === c.advisor_id) {
        continue;
      }
      const option = document.createElement('option');
      option.value = String(a.advisor_id);
      option.textContent = a.display_name + ' (' + stateLabel(a.state) + ')';
      select.appendChild(option);
    }
    if (picked.has(c.consultation_id)) {
      select.value = picked.get(c.consultation_id);
    }
    select.addEventListener('change', () => picked.set(c.consultation_id, select.value));
    return select;
  }

  function renderConsultations(board) {
    const body = document.querySelector('#consultations tbody');
    body.replaceChildren();
    for (const c of board.consultations) {
      const row = document.createElement('tr');
      row.dataset.consultationId = c.consultation_id;
      row.dataset.onHold = String(c.on_hold);
      cell(row, c.customer).className = 'customer';
      cell(row, c.advisor_name);
      cell(row, t('method-' + c.method));
      cell(row, when(c.talking_since) + (c.on_hold ? ' (' + t('on-hold') + ')' : ''));
      const cid = c.consultation_id;
      const actions = [c.on_hold ? button(t('unhold'), 'unhold', control(cid, 'unhold'))
                                 : button(t('hold'), 'hold', control(cid, 'hold'))];
      if (c.transferring) {
        actions.push(button(t('transfer-complete'), 'transfer-complete',
                            control(cid, 'transfer/complete')));
        actions.push(button(t('transfer-cancel'), 'transfer-cancel',
                            control(cid, 'transfer/cancel')));
      } else {
        const select = transferPicker(c, board.advisors);
        actions.push(select);
        actions.push(button(t('transfer'), 'transfer', () => {
          if (select.value) {
            act('/v1/operator/consultations/' + encodeURIComponent(cid) + '/transfer',
                'POST', {advisor_id: Number(select.value)});
          }
        }));
      }
      actions.push(button(t('end'), 'force-end danger', () => {
        if (window.confirm(t('confirm-end'))) {
          control(cid, 'end')();
        }
      }));
      cell(row, actions);
      body.appendChild(row);
    }
  }

  function renderQueue(board) {
    const body = document.querySelector('#queue tbody');
    body.replaceChildren();
    for (const q of board.queue) {
      const row = document.createElement('tr');
      row.dataset.consultationId = q.consultation_id;
      cell(row, String(q.place)).className = 'place';
      cell(row, when(q.queued_at));
      body.appendChild(row);
    }
  }

  function render(board) {
    document.getElementById('lines-in-use').textContent = String(board.lines.in_use);
    document.getElementById('lines-total').textContent = String(board.lines.total);
    renderAdvisors(board);
    renderConsultations(board);
    renderQueue(board);
  }

  async function refresh() {
    let response = null;
    try {
      response = await fetch('/v1/operator/board', {credentials: 'same-origin'});
    } catch (err) {
      return;            // the next poll tries again
    }
    if (response.status === 401) {
      signedOut();
      return;
    }
    if (!response.ok) {
      return;
    }
    const text = await response.text();
    if (text !== shown) {        // a select being used is not rebuilt for nothing
      shown = text;
      render(JSON.parse(text));
    }
  }

  document.getElementById('sign-out').addEventListener('click', async () => {
    const answer = await send('/v1/operator/signout', 'POST');
    if (answer && answer.ok) {
      signedOut();
    }
  });
  refresh();
  timer = window.setInterval(refresh, 1000);
})();
