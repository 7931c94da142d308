// The customer's click-to-call page (web/click_page.py): the advisors' availability
// refreshed from GET /v1/m/{merchant}/advisors; 「電話で相談する」 opens the form: the
// number, a one-time code by SMS, then the call asked for with the verification's CSRF
// token, and its progress followed until it ends. Everything the script says is in
// #click-page's data attributes.
'use strict';

(function () {
  const root = document.getElementById('click-page');
  if (!root) {
    return;
  }
  const data = root.dataset;
  const base = '/v1/m/' + encodeURIComponent(data.merchant);
  const panel = document.getElementById('call-panel');
  const numberForm = document.getElementById('number-form');
  const codeForm = document.getElementById('code-form');
  const status = document.getElementById('call-status');
  let advisorId = null;
  let number = '';
  let csrf = '';
  let following = null;

  const topUp = document.getElementById('topup-link');

  function say(kind, message) {
    status.textContent = message;
    status.className = kind;
    topUp.hidden = true;
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (whole, name) =>
      (values[name] === undefined ? whole : String(values[name])));
  }

  function refusal(body) {
    const error = (body && body.error) || {};
    if (error.id === 'billing-refused') {
      const words = data['msg' + camel(error.reason || '')] || data.msgBillingRefused;
      return fill(words, {available: error.available_yen, needed: error.needed_yen,
                          reason: error.reason});
    }
    if (error.id === 'code-wrong') {
      return fill(data.msgCodeWrong, {n: error.attempts_left});
    }
    if (error.id === 'invalid-field' && error.field === 'number') {
      return data.msgInvalidNumber;
    }
    if (error.id === 'verification-required') {
      return data.msgVerifyAgain;
    }
    return data['msg' + camel(error.id || '')] || data.msgFailed;
  }

  function camel(id) {
    return id.split('-').map((part) => part.charAt(0).toUpperCase() + part.slice(1))
      .join('');
  }

  async function call(url, method, body, headers) {
    const response = await fetch(url, {
      method: method, credentials: 'same-origin',
      headers: Object.assign({'Content-Type': 'application/json'}, headers || {}),
      body: body === undefined ? undefined : JSON.stringify(body)});
    const answer = await response.json().catch(() => ({}));
    return {ok: response.ok, status: response.status, body: answer};
  }

  async function refresh() {
    let answer;
    try {
      answer = await call(base + '/advisors', 'GET');
    } catch (err) {
      return;
    }
    if (!answer.ok) {
      return;
    }
    for (const advisor of answer.body.advisors) {
      const item = document.querySelector('li.advisor[data-advisor-id="' + advisor.id + '"]');
      if (!item) {
        continue;
      }
      item.dataset.availability = advisor.availability;
      item.querySelector('.availability').textContent =
        data['msg' + camel(advisor.availability)];
      item.querySelector('button.call').hidden = advisor.availability !== 'available';
    }
  }

  async function requestCall() {
    const answer = await call(base + '/calls', 'POST', {advisor_id: advisorId},
                              {'X-CSRF-Token': csrf});
    if (answer.status === 401) {      // the verification ran out: verify again
      csrf = '';
      numberForm.hidden = false;
      codeForm.hidden = true;
    }
    if (!answer.ok) {
      say('error', refusal(answer.body));
      const error = answer.body.error || {};
      // the balance is too low: the merchant's top-up page, if it has one
      topUp.hidden = !(error.reason === 'balance-too-low' && data.topupUrl);
      return;
    }
    numberForm.hidden = true;
    codeForm.hidden = true;
    say('progress', data.msgCalling);
    follow(answer.body.callback_id);
  }

  function follow(callbackId) {
    if (following) {
      clearInterval(following);
    }
    const words = {calling: data.msgCalling, connecting: data.msgConnecting,
                   talking: data.msgTalkingNow, ended: data.msgEnded};
    following = setInterval(async () => {
      let answer;
      try {
        answer = await call(base + '/calls/' + encodeURIComponent(callbackId), 'GET');
      } catch (err) {
        return;
      }
      if (!answer.ok) {
        return;
      }
      say('progress', words[answer.body.progress] || '');
      status.dataset.progress = answer.body.progress;
      if (answer.body.progress === 'ended') {
        clearInterval(following);
        following = null;
      }
    }, 1000);
  }

  for (const button of document.querySelectorAll('button.call')) {
    button.addEventListener('click', async () => {
      advisorId = Number(button.dataset.advisorId);
      const item = button.closest('li.advisor');
      document.getElementById('call-advisor').textContent =
        item.querySelector('.name').textContent;
      panel.hidden = false;
      say('', '');
      if (csrf) {
        await requestCall();
      } else {
        numberForm.hidden = false;
        codeForm.hidden = true;
        document.getElementById('phone-number').focus();
      }
    });
  }

  numberForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    number = document.getElementById('phone-number').value;
    const answer = await call(base + '/phone-codes', 'POST', {number: number});
    if (!answer.ok) {
      say('error', refusal(answer.body));
      return;
    }
    codeForm.hidden = false;
    say('', data.msgCodeSent);
    document.getElementById('phone-code').focus();
  });

  codeForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const code = document.getElementById('phone-code').value.trim();
    const answer = await call(base + '/phone-verifications', 'POST',
                              {number: number, code: code});
    if (!answer.ok) {
      say('error', refusal(answer.body));
      if (answer.body.error && answer.body.error.id !== 'code-wrong') {
        codeForm.hidden = true;
      }
      return;
    }
    csrf = answer.body.csrf;
    await requestCall();
  });

  setInterval(refresh, Number(data.refreshS) * 1000);
})();
