// The card page and the top-up page (web/card_form.py): Stripe's card element, the
// SetupIntent confirmed with Stripe.js, then the site asked to look it up at Stripe (and
// put the card on file, or charge the top-up to it). Everything the script needs is in
// #card-page's data attributes.
'use strict';

(function () {
  const root = document.getElementById('card-page');
  if (!root) {
    return;
  }
  const data = root.dataset;
  const form = document.getElementById('card-form');
  const button = document.getElementById('card-submit');
  const status = document.getElementById('card-status');
  const stripe = Stripe(data.publishableKey);
  const card = stripe.elements({locale: data.lang}).create('card', {hidePostalCode: true});
  card.mount('#card-element');

  const INCORRECT = ['incorrect_number', 'invalid_number', 'incomplete_number',
                     'incorrect_cvc', 'invalid_cvc', 'incomplete_cvc',
                     'invalid_expiry_month', 'invalid_expiry_year', 'incomplete_expiry'];

  function show(kind, message) {
    status.textContent = message;
    status.className = kind;
  }

  function failure(error) {
    const code = (error && error.code) || '';
    if (code === 'card_declined') {
      return data.msgDeclined;
    }
    if (code === 'expired_card') {
      return data.msgExpiredCard;
    }
    if (INCORRECT.indexOf(code) >= 0) {
      return data.msgIncorrect;
    }
    return data.msgFailed;
  }

  async function confirmed() {
    // the site asks Stripe itself: the browser's word is not taken
    const response = await fetch(data.confirmUrl, {method: 'POST'});
    const body = await response.json().catch(() => ({}));
    return response.ok ? body.state : '';
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    show('working', data.msgWorking);
    let result;
    try {
      result = await stripe.confirmCardSetup(data.clientSecret,
                                             {payment_method: {card: card}});
    } catch (err) {
      result = {error: err};
    }
    if (result.error) {
      show('error', failure(result.error));
      button.disabled = false;
      return;
    }
    let state = '';
    try {
      state = await confirmed();
    } catch (err) {
      state = '';
    }
    if (state === data.doneState) {
      form.hidden = true;
      show('done', data.msgDone);
    } else if (state === 'failed') {     // the top-up's charge to the card was declined
      form.hidden = true;
      show('error', data.msgChargeFailed);
    } else {
      show('error', data.msgFailed);
      button.disabled = false;
    }
  });
})();
