"""What the pages say, in Japanese and English: name → (Japanese, English). ``{merchant}``
is the merchant's name, ``{amount}`` an amount of yen (:func:`yen`). The script's messages
(``msg-*``) reach it as the page's data attributes."""

from __future__ import annotations

from shared.language import Language

TEXTS: dict[str, tuple[str, str]] = {
    "card.title": ("カードのご登録", "Register your card"),
    "card.lead": ("{merchant} でご利用になるクレジットカードを登録します。",
                  "Register the credit card you will use with {merchant}."),
    "card.postpaid": ("ご相談が終わるたびに、通話料金をこのカードにご請求します。",
                      "After each consultation, its charge is made to this card."),
    "card.prepaid": ("このカードで、ご相談用の残高をチャージできるようになります。",
                     "You will be able to top your consultation balance up from this card."),
    "card.label": ("カード情報", "Card details"),
    "card.submit": ("カードを登録する", "Register the card"),
    "card.note": ("カード番号は決済代行会社 Stripe が直接お預かりし、当社には保存されません。",
                  "Your card number goes straight to Stripe, our payment processor; we do "
                  "not store it."),
    "topup.title": ("残高のチャージ", "Top up your balance"),
    "topup.lead": ("{merchant} のご相談用の残高に {amount} をチャージします。",
                   "Add {amount} to your {merchant} consultation balance."),
    "topup.saved": ("お支払いのカードは、次からのチャージにも使えるよう登録されます。",
                    "The card you pay with is kept for your next top-ups."),
    "topup.submit": ("{amount} を支払う", "Pay {amount}"),
    "topup.done": ("{amount} をチャージしました。このページを閉じてください。",
                   "{amount} has been added to your balance. You can close this page."),
    "card.done": ("カードを登録しました。このページを閉じてください。",
                  "Your card is registered. You can close this page."),
    "msg-working": ("処理しています…", "Processing…"),
    "msg-declined": ("このカードはご利用いただけませんでした。別のカードをお試しください。",
                     "This card was declined. Please try another card."),
    "msg-expired-card": ("カードの有効期限が切れています。別のカードをお試しください。",
                         "This card has expired. Please try another card."),
    "msg-incorrect": ("カード番号・有効期限・セキュリティコードをご確認ください。",
                      "Please check the card number, expiry date and security code."),
    "msg-failed": ("お手続きを完了できませんでした。時間をおいてもう一度お試しください。",
                   "This could not be completed. Please try again later."),
    "advisor.title": ("相談員ページ", "Advisor page"),
    "advisor.now": ("現在の状態:", "Now:"),
    "advisor.state.standby": ("待機中", "Available"),
    "advisor.state.ringing": ("着信中", "Ringing"),
    "advisor.state.talking": ("通話中", "On a call"),
    "advisor.state.wrap_up": ("後処理中", "After-call work"),
    "advisor.state.working": ("作業中", "Other work"),
    "advisor.state.break": ("休憩中", "On a break"),
    "advisor.state.offline": ("オフライン", "Offline"),
    "advisor.go-online": ("待機", "Available"),
    "advisor.go-break": ("休憩", "Break"),
    "advisor.go-working": ("作業", "Other work"),
    "advisor.go-offline": ("オフライン", "Offline"),
    "advisor.end-wrap-up": ("後処理を終える", "End after-call work"),
    "advisor.sign-out": ("サインアウト", "Sign out"),
    "advisor.failed": ("変更できませんでした。もう一度お試しください。",
                       "That did not go through. Please try again."),
    "advisor.signin.title": ("相談員ページへのサインイン", "Sign in to the advisor page"),
    "advisor.signin.lead": ("下のボタンを押すと、このブラウザでサインインします。",
                            "Press the button to sign in on this browser."),
    "advisor.signin.submit": ("サインインする", "Sign in"),
    "click.title": ("{merchant} 電話相談", "{merchant}: talk to an advisor"),
    "click.lead": ("相談したい相談員の「電話で相談する」を押してください。"
                   "お客様の電話にお掛けします。",
                   "Press \"Call me\" next to an advisor: we call your phone."),
    "click.no-merchant": ("このページは見つかりません。", "This page does not exist."),
    "click.available": ("相談できます", "Available"),
    "click.talking": ("通話中", "On a call"),
    "click.offline": ("オフライン", "Offline"),
    "click.per-minute": ("1分 {amount}（税込）", "{amount} a minute (tax included)"),
    "click.call": ("電話で相談する", "Call me"),
    "click.number": ("お客様の電話番号", "Your phone number"),
    "click.send-code": ("確認コードを送る", "Send me a code"),
    "click.code": ("SMSで届いた6桁の確認コード", "The 6-digit code we sent by SMS"),
    "click.verify": ("確認して電話を受ける", "Verify and call me"),
    "click.code-sent": ("確認コードをSMSでお送りしました。", "We sent you a code by SMS."),
    "click.calling": ("お客様のお電話をお呼び出ししています…", "Calling your phone…"),
    "click.connecting": ("相談員におつなぎしています…", "Connecting you to the advisor…"),
    "click.talking-now": ("通話中です。", "You are talking with the advisor."),
    "click.ended": ("通話は終了しました。", "The call has ended."),
    "click.failed": ("うまくいきませんでした。時間をおいてもう一度お試しください。",
                     "That did not work. Please try again later."),
    "click.invalid-number": ("電話番号をご確認ください。", "Please check the phone number."),
    "click.code-wrong": ("確認コードが違います（あと{n}回）。",
                         "That code is not right ({n} tries left)."),
    "click.code-expired": ("確認コードの有効期限が切れました。もう一度お送りください。",
                           "The code has expired. Please ask for a new one."),
    "click.number-locked": ("確認コードの誤りが続いたため、この番号はしばらく"
                            "ご利用いただけません。",
                            "Too many wrong codes: this number is locked for a while."),
    "click.rate-limited": ("お手続きが多すぎます。しばらくしてからお試しください。",
                           "Too many tries. Please wait a while."),
    "click.number-refused": ("この電話番号にはおかけできません。",
                             "We cannot call this phone number."),
    "click.advisor-unavailable": ("この相談員はただいま電話を受けられません。",
                                  "This advisor cannot take a call right now."),
    "click.balance-too-low": ("残高が不足しています（残高 {available}円、必要 {needed}円）。"
                              "チャージしてからお試しください。",
                              "Your balance is too low (¥{available}; ¥{needed} needed). "
                              "Please top up first."),
    "click.topup": ("残高をチャージする", "Top up your balance"),
    "click.no-card": ("お支払いのカードが登録されていません。",
                      "No card is registered for payment."),
    "click.in-dunning": ("未払いのご利用料金があります。お支払い後にご利用ください。",
                         "A charge is unpaid. Please pay it first."),
    "click.unpaid-limit": ("未払いのご利用料金があります。お支払い後にご利用ください。",
                           "Charges are unpaid. Please pay them first."),
    "click.billing-refused": ("ご利用いただけません（{reason}）。",
                              "This consultation cannot be started ({reason})."),
    "click.verify-again": ("もう一度、電話番号の確認をお願いします。",
                           "Please verify your phone number again."),
    "operator.title": ("オペレーター画面", "Operator board"),
    "operator.state.ringing": ("呼出中", "Ringing"),
    "operator.lines": ("使用中の回線", "Lines in use"),
    "operator.advisors": ("相談員", "Advisors"),
    "operator.consultations": ("通話中の相談", "Consultations now"),
    "operator.queue": ("順番待ちのお客様", "Customers waiting"),
    "operator.col.name": ("名前", "Name"),
    "operator.col.state": ("状態", "State"),
    "operator.col.since": ("いつから", "Since"),
    "operator.col.actions": ("操作", "Actions"),
    "operator.col.customer": ("お客様", "Customer"),
    "operator.col.advisor": ("相談員", "Advisor"),
    "operator.col.method": ("方法", "Method"),
    "operator.col.talking-since": ("通話開始", "Talking since"),
    "operator.col.place": ("順番", "Place"),
    "operator.col.queued-at": ("待ち始め", "Waiting since"),
    "operator.set-standby": ("待機", "Available"),
    "operator.set-break": ("休憩", "Break"),
    "operator.set-offline": ("オフライン", "Offline"),
    "operator.hold": ("保留", "Hold"),
    "operator.unhold": ("保留解除", "Resume"),
    "operator.on-hold": ("保留中", "On hold"),
    "operator.transfer": ("転送", "Transfer"),
    "operator.transfer-to": ("転送先", "Transfer to"),
    "operator.transfer-complete": ("転送完了", "Complete transfer"),
    "operator.transfer-cancel": ("転送取消", "Cancel transfer"),
    "operator.end": ("強制終了", "Force end"),
    "operator.confirm-end": ("この相談を強制終了します。よろしいですか？",
                             "End this consultation now?"),
    "operator.method.click_to_call": ("Webから", "From the web"),
    "operator.method.online_list": ("待機中一覧", "List of those available"),
    "operator.method.all_list": ("全員一覧", "List of all"),
    "operator.method.code": ("番号指定", "By code"),
    "operator.method.group": ("グループ", "Group"),
    "operator.none": ("ありません", "None"),
    "operator.sign-out": ("サインアウト", "Sign out"),
    "operator.signin.title": ("オペレーター画面へのサインイン", "Sign in to the operator board"),
    "operator.signin.lead": ("下のボタンを押すと、このブラウザでサインインします。",
                             "Press the button to sign in on this browser."),
    "operator.done": ("受け付けました。", "Requested."),
    "operator.refused.consultation-not-running": (
        "この相談はすでに終了しています。", "This consultation is over."),
    "operator.refused.consultation-not-talking": (
        "まだ通話が始まっていないため保留できません。",
        "Nobody is talking yet: it cannot be held."),
    "operator.refused.not-found": ("相談または相談員が見つかりません。",
                                   "No such consultation or advisor."),
    "operator.refused.number-refused": ("この番号には転送できません。",
                                        "This number may not be called."),
    "operator.refused.invalid-field": ("入力内容に誤りがあります。", "Something is invalid."),
    "operator.refused.csrf-invalid": ("ページを再読み込みしてください。",
                                      "Please reload the page."),
    "operator.refused.other": ("操作できませんでした。もう一度お試しください。",
                               "This could not be done. Please try again."),
    "error.signed-out.title": ("サインインしてください", "Please sign in"),
    "error.signed-out": ("サインインしていないか、有効期限が切れています。"
                         "新しいサインイン用リンクを管理者にご依頼ください。",
                         "You are not signed in, or your session has ended. Please ask "
                         "your administrator for a new sign-in link."),
    "error.signin-link.title": ("このリンクは使えません", "This link cannot be used"),
    "error.signin-link": ("サインイン用リンクが無効か、使用済みか、有効期限切れです。"
                          "新しいリンクを管理者にご依頼ください。",
                          "This sign-in link is not valid, already used or expired. Please "
                          "ask your administrator for a new one."),
    "error.cross-site.title": ("このページからは使えません", "Not from this page"),
    "error.cross-site": ("別のサイトから送られた操作は受け付けていません。"
                         "届いたリンクを直接開いてください。",
                         "This was sent from another site. Please open the link you were "
                         "sent directly."),
    "error.not-found.title": ("リンクが見つかりません", "Link not found"),
    "error.not-found": ("このリンクは無効です。お送りしたリンクをもう一度ご確認ください。",
                        "This link is not valid. Please check the link we sent you."),
    "error.used.title": ("登録済みのリンクです", "Link already used"),
    "error.used": ("このリンクのカードはすでに登録されています。",
                   "The card for this link is already registered."),
    "error.topped-up.title": ("お支払い済みのリンクです", "Already paid"),
    "error.topped-up": ("このリンクの {amount} のチャージは完了しています。",
                        "The top-up of {amount} for this link is done."),
    "error.topup-failed.title": ("使用済みのリンクです", "Link already used"),
    "error.topup-failed": ("このリンクのお支払いはできませんでした。お手数ですが、新しいリンクを"
                           "ご依頼ください。",
                           "The payment for this link did not go through. Please ask us for "
                           "a new link."),
    "error.topup-pending.title": ("お支払いを確認しています", "Payment in progress"),
    "error.topup-pending": ("このリンクのお支払いを確認しています。しばらくしてから、もう一度"
                            "開いてください。",
                            "We are confirming the payment for this link. Please open it "
                            "again in a while."),
    "error.expired.title": ("リンクの有効期限切れ", "Link expired"),
    "error.expired": ("このリンクは有効期限が切れています。"
                      "お手数ですが、新しいリンクをご依頼ください。",
                      "This link has expired. Please ask us for a new one."),
    "error.unavailable.title": ("ただいまご利用いただけません", "Not available right now"),
    "error.unavailable": ("ただいまカードの登録を受け付けられません。しばらくしてから、"
                          "もう一度お試しください。",
                          "Card registration is not available right now. Please try again "
                          "in a while."),
}


def text(name: str, language: Language, **values: str) -> str:
    return template(name, language).format(**values)


def template(name: str, language: Language) -> str:
    """The text with its ``{placeholders}`` (a script fills them in)."""
    ja, en = TEXTS[name]
    return ja if language is Language.JAPANESE else en


def yen(amount: int, language: Language) -> str:
    """3000 → 「3,000円」 or "¥3,000"."""
    return f"{amount:,}円" if language is Language.JAPANESE else f"¥{amount:,}"
