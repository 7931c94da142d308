// The advisor's page (web/advisor_page.py): the advisor's state kept live from
// GET /v1/advisor/events (a 'state' snapshot, then one 'presence' event per change), and
// the buttons that change it with PUT /v1/advisor/presence (the session's CSRF token in
// X-CSRF-Token). Every snapshot and event carries the id of the last presence event it
// includes: an older one than already shown is ignored.
'use strict';

(function () {
  const root = document.getElementById('advisor-page');
  if (!root) {
    return;
  }
  const data = root.dataset;
  const stateLine = document.getElementById('advisor-state');
  const reasonLine = document.getElementById('advisor-reason');
  const status = document.getElementById('advisor-status');
  const endWrapUp = document.getElementById('end-wrap-up');
  const buttons = Array.from(document.querySelectorAll('button.presence'));
  let seen = -1;

  function label(state) {
    const key = 'state' + state.split('_').map(
      (part) => part.charAt(0).toUpperCase() + part.slice(1)).join('');
    return data[key] || state;
  }

  function show(state, desk, reason, id) {
    if (id < seen) {
      return;
    }
    seen = id;
    stateLine.textContent = label(state);
    stateLine.dataset.state = state;
    reasonLine.textContent = reason || '';
    endWrapUp.hidden = desk !== 'wrap_up';
    for (const button of buttons) {
      button.setAttribute('aria-pressed', String(button !== endWrapUp && desk ===
        (button.dataset.presence === 'online' ? 'standby' : button.dataset.presence)));
    }
  }

  function snapshot(me) {
    show(me.presence.state, me.presence.desk, me.presence.reason, me.event_id);
  }

  function signedOut() {
    window.location.assign(data.signedOutUrl);
  }

  const events = new EventSource('/v1/advisor/events');
  events.addEventListener('state', (event) => snapshot(JSON.parse(event.data)));
  events.addEventListener('presence', (event) => {
    const change = JSON.parse(event.data);
    show(change.after, change.desk, change.reason, change.id);
  });
  events.addEventListener('error', () => {
    if (events.readyState === EventSource.CLOSED) {   // refused: no session any more
      signedOut();
    }
  });

  async function send(url, method, body) {
    const response = await fetch(url, {
      method: method, credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'X-CSRF-Token': data.csrf},
      body: body === undefined ? undefined : JSON.stringify(body)});
    if (response.status === 401) {
      signedOut();
      return null;
    }
    if (!response.ok) {
      throw new Error('HTTP ' + response.status);
    }
    return response.json();
  }

  for (const button of buttons) {
    button.addEventListener('click', async () => {
      status.textContent = '';
      try {
        const me = await send('/v1/advisor/presence', 'PUT',
                              {presence: button.dataset.presence});
        if (me) {
          snapshot(me);
        }
      } catch (err) {
        status.textContent = data.msgFailed;
      }
    });
  }

  document.getElementById('sign-out').addEventListener('click', async () => {
    try {
      await send('/v1/advisor/signout', 'POST');
    } catch (err) {
      status.textContent = data.msgFailed;
      return;
    }
    events.close();
    signedOut();
  });
})();
