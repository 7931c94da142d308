"""The system prompts: one table, each name with its Japanese and English text (pure).

A prompt ``NAME`` is played as ``sound:cbgw/NAME``; ``deploy/asterisk/instance.py
install`` renders both languages through :mod:`ivr_platform.tts` (``python -m
ivr_platform prompts``) into the site's ``sounds/ja/cbgw/`` and ``sounds/en/cbgw/``, and
every playback passes the merchant's language (ARI ``play?lang=``), so Asterisk picks the
file of that language. The edge plays ``received``, ``dial-186`` and, out of hours when the
sentence saying when it opens is not rendered yet, ``closed`` to customers, and the
``presence-*`` prompts to advisors calling a presence number (``edge_server.presence_flow``);
the call-back IVR plays the others (``callback_server/flows/order.toml``, ``consult.toml``;
the IVR itself plays ``advisor-*`` and ``lines-busy`` for its consultation nodes, a queued
customer hears ``queue-place-N`` (``queue-place-many`` past 9), and the
billing refusals ``balance-too-low``, ``no-card``, ``in-dunning``, ``unpaid-limit``; a
prepaid consultation plays ``balance-warning`` and ``balance-cutoff``; a web click-to-call
plays ``connecting-advisor`` or ``connecting-customer`` and ``party-no-answer`` to the
party rung first).

The digits Asterisk says for ``digits:`` media (a read-back: ``digits:123`` plays
``digits/1``, ``digits/2``, ``digits/3`` of the channel's language) come with Asterisk in
English only; Japanese ones (phone-number style, as :mod:`ivr_platform.speech` reads
them: ゼロ, イチ, ニー, …) are rendered with the system prompts into ``sounds/ja/digits/``
(:data:`DIGIT_PROMPTS`). Without them Asterisk falls back to its English digits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ivr_platform.speech import English, Japanese
from shared.language import Language


@dataclass(frozen=True, slots=True)
class PromptText:
    ja: str
    en: str

    def text(self, language: Language) -> str:
        return self.ja if language is Language.JAPANESE else self.en


SYSTEM_PROMPTS: Mapping[str, PromptText] = MappingProxyType({
    # --- the edge ------------------------------------------------------------------------
    # played within the answer-mode guard (edge_server.flow_messages.FlowTimings
    # answer_guard_s, 4.5 s after the answer): tests/integration/test_ivr_prompt_lengths.py
    # holds its rendered length to that bound (the longer greeting rendered to 8.1 s: cut)
    "received": PromptText(
        "折り返しお電話しますので、お切りください。",
        "We will call you back. Please hang up."),
    "dial-186": PromptText(
        "恐れ入りますが、番号の前にイチハチロクをつけておかけ直しください。",
        "Your number was withheld. Please dial 1 8 6 before the number and call again."),
    "closed": PromptText(
        "お電話ありがとうございます。ただいまの時間は、営業時間外です。"
        "恐れ入りますが、営業時間内におかけ直しください。",
        "Thank you for calling. We are closed at this time. Please call again during "
        "our business hours."),
    # --- the edge: an advisor calling a presence number ----------------------------------
    "presence-online": PromptText(
        "オンラインになりました。お客様からのお電話をお受けできます。",
        "You are now online. You can take calls."),
    "presence-offline": PromptText(
        "オフラインになりました。お客様からのお電話はつながりません。",
        "You are now offline. You will not get calls."),
    "presence-not-registered": PromptText(
        "この電話番号は登録されていません。状態は変更されませんでした。",
        "This phone is not registered. Nothing was changed."),
    "presence-ambiguous": PromptText(
        "この電話番号は複数の鑑定士に登録されているため、状態を変更できません。"
        "管理者にお問い合わせください。",
        "This phone is registered to more than one advisor, so nothing was changed. "
        "Please ask your administrator."),
    "presence-in-call": PromptText(
        "通話中のため、状態は変更されませんでした。",
        "You have a call in progress. Nothing was changed."),
    "presence-failed": PromptText(
        "ただいま状態の変更を確認できませんでした。しばらくしてからもう一度おかけください。",
        "We could not confirm a change of your status right now. "
        "Please call again in a moment."),
    # --- the call-back IVR ---------------------------------------------------------------
    "confirm-callback": PromptText(
        "ご依頼いただいた折り返しのお電話です。お話しになる場合は1を押してください。",
        "This is the call back you requested. Press 1 to continue."),
    "welcome-menu": PromptText(
        "ご注文は1を、お問い合わせは2を、オペレーターにおつなぎする場合は0を押してください。",
        "Press 1 to order, 2 for an inquiry, 0 for an operator."),
    "enter-item": PromptText(
        "商品コードを入力し、最後にシャープを押してください。",
        "Please enter the item code, then press hash."),
    "enter-quantity": PromptText(
        "数量を入力し、最後にシャープを押してください。",
        "Please enter the quantity, then press hash."),
    "you-entered": PromptText("入力された内容は、", "You entered"),
    "item-code": PromptText("商品コード", "Item code"),
    "quantity": PromptText("数量", "Quantity"),
    "order-number": PromptText("注文番号", "Order number"),
    "confirm": PromptText(
        "よろしければ1を、入力し直す場合は2を押してください。",
        "Press 1 to confirm, 2 to re-enter."),
    "inquiry": PromptText(
        "注文番号を入力し、最後にシャープを押してください。",
        "Please enter your order number, then press hash."),
    "invalid": PromptText(
        "申し訳ございません。入力が正しくありません。",
        "Sorry, that entry is not valid."),
    "no-input": PromptText(
        "入力が確認できませんでした。",
        "We did not receive any input."),
    "connecting-operator": PromptText(
        "オペレーターにおつなぎします。そのままお待ちください。",
        "Please hold while we connect you to an operator."),
    "operator-unavailable": PromptText(
        "申し訳ございません。ただいまオペレーターにおつなぎできません。"
        "しばらくしてからおかけ直しください。",
        "Sorry, no operator is available right now. Please try again later."),
    # --- consultation lines (callback_server/flows/consult.toml) ------------------------
    "consult-menu": PromptText(
        "鑑定士の番号をご存じの方は1を、空いている鑑定士におつなぎする場合は2を、"
        "ただいまお話しできる鑑定士の一覧は3を、すべての鑑定士の一覧は4を押してください。",
        "Press 1 to enter your advisor's code, 2 for the first free advisor, 3 to hear "
        "the advisors free now, 4 to hear all our advisors."),
    "advisor-list-online": PromptText(
        "ただいまお話しできる鑑定士です。番号を押してお選びください。",
        "These advisors can take your call now. Press the number of your choice."),
    "advisor-list-all": PromptText(
        "鑑定士の一覧です。番号を押してお選びください。",
        "Here are our advisors. Press the number of your choice."),
    "advisor-list-more": PromptText(
        "次の一覧は0を押してください。",
        "For more advisors, press 0."),
    "advisor-list-first": PromptText(
        "最初の一覧に戻るには0を押してください。",
        "To hear the list from the start, press 0."),
    "enter-advisor-code": PromptText(
        "鑑定士の4桁の番号を入力してください。",
        "Please enter the four-digit code of your advisor."),
    "advisor-unknown": PromptText(
        "その番号の鑑定士はおりません。",
        "There is no advisor with that code."),
    "advisor-talking": PromptText(
        "その鑑定士はただいま通話中です。",
        "That advisor is talking with someone right now."),
    "advisor-offline": PromptText(
        "その鑑定士はただいま受付をしておりません。",
        "That advisor is not taking calls now."),
    "advisor-away": PromptText(
        "その鑑定士はただいま席を外しております。",
        "That advisor is away from their desk."),
    "connecting-advisor": PromptText(
        "鑑定士におつなぎします。そのままお待ちください。",
        "Please hold while we connect you to an advisor."),
    "lines-busy": PromptText(
        "ただいま回線が大変混み合っております。しばらくしてからおかけ直しください。",
        "All our lines are busy. Please call again later."),
    # a queued customer's place (callback_server.queue_announce): 1..9, then
    # one for every place after
    **{f"queue-place-{n}": PromptText(Japanese().queue_place(n) + "。",
                                      English().queue_place(n) + ".")
       for n in range(1, 10)},
    "queue-place-many": PromptText(
        "ただいま大変混み合っております。順番におつなぎしますので、そのままお待ちください。",
        "Many callers are waiting. Please hold; we will connect you in turn."),
    "advisor-unavailable": PromptText(
        "申し訳ございません。ただいま鑑定士におつなぎできません。"
        "しばらくしてからおかけ直しください。",
        "Sorry, no advisor is available right now. Please try again later."),
    # --- web click-to-call (callback_server.click_to_call): the party rung first -----
    "connecting-customer": PromptText(
        "お客様におつなぎします。そのままお待ちください。",
        "Please hold while we connect you to the customer."),
    "party-no-answer": PromptText(
        "申し訳ございません。お相手が応答しませんでした。通話を終了します。",
        "Sorry, the other party did not answer. This call will now end."),
    "forced-end": PromptText(
        "オペレーターにより通話を終了します。ご利用ありがとうございました。",
        "The operator is ending this call. Thank you for calling."),
    # --- billing of consultations (callback_server.consult_runner) -------------------
    "balance-too-low": PromptText(
        "残高が不足しているため、おつなぎできません。"
        "チャージしてから、もう一度おかけください。",
        "Your balance is too low for a consultation. Please top up your balance and "
        "call again."),
    "no-card": PromptText(
        "お支払いのカードが登録されていないため、おつなぎできません。"
        "カードをご登録のうえ、もう一度おかけください。",
        "No payment card is registered. Please register a card and call again."),
    "in-dunning": PromptText(
        "前回のお支払いが完了していないため、おつなぎできません。"
        "お支払いのカードをご確認ください。",
        "Your last payment did not go through. Please check your payment card."),
    "unpaid-limit": PromptText(
        "未払いのご利用があるため、おつなぎできません。"
        "お支払いの完了後に、もう一度おかけください。",
        "You have unpaid consultations. Please call again once they are paid."),
    "balance-warning": PromptText(
        Japanese().remaining(60) + "。", "About " + English().remaining(60) + "."),
    "balance-cutoff": PromptText(
        "残高がなくなりましたので、通話を終了します。",
        "Your balance has run out. The call will now end."),
    "thank-you": PromptText(
        "ありがとうございます。ご依頼を承りました。",
        "Thank you. Your request has been recorded."),
    "goodbye": PromptText(
        "お電話ありがとうございました。失礼いたします。",
        "Thank you for calling. Goodbye."),
})

#: ``{language: {digit: text}}``: the ``digits/N`` sounds rendered for a language that
#: Asterisk has no recordings of (English has Asterisk's own)
DIGIT_PROMPTS: Mapping[Language, Mapping[str, str]] = MappingProxyType({
    Language.JAPANESE: MappingProxyType({
        str(d): Japanese().digits(str(d)) for d in range(10)}),
})


def sounds(language: Language) -> dict[str, str]:
    """Every sound rendered for ``language``: ``{name under sounds/LANG: text}``, the
    system prompts as ``cbgw/NAME`` and the digits as ``digits/N``."""
    named = {f"cbgw/{name}": prompt.text(language) for name, prompt in SYSTEM_PROMPTS.items()}
    digits = DIGIT_PROMPTS.get(language, {})
    return named | {f"digits/{digit}": text for digit, text in digits.items()}
