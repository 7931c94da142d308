"""Building blocks of the Japanese IVR platform (Japanese first, English second).

Each module is one role (see the "IVR platform" section of docs/CONTRACTS.md); the
servers use :mod:`ivr_platform.prompts` (the system prompts) and, at install,
:mod:`ivr_platform.tts` renders them; the callback site mounts the media API:

* :mod:`ivr_platform.hours`, :mod:`ivr_platform.hours_config`: business hours, Japanese
  public holidays and special days, in Asia/Tokyo (pure);
  :mod:`ivr_platform.hours_speech`: what the IVR says out of hours (pure).
* :mod:`ivr_platform.speech`: how numbers, yen, phone numbers, durations, times and
  dates are read aloud, in Japanese and English (pure).
* :mod:`ivr_platform.prompts`: the system prompts' texts, Japanese and English.
* :mod:`ivr_platform.tts`: prompts rendered by Open JTalk (Japanese) or espeak-ng
  (English) into 8 kHz 16-bit mono WAV files, cached by a hash of what was asked.
* :mod:`ivr_platform.sms` (segments and statuses, pure), :mod:`ivr_platform.sms_twilio`
  (Twilio's Messages API), :mod:`ivr_platform.sms_store` (PostgreSQL, migration set
  ``ivr_platform``; the sender), :mod:`ivr_platform.sms_http` (the status callback).
* :mod:`ivr_platform.notice` (what a call notification says, pure) and its adapters:
  :mod:`ivr_platform.notify_webhooks` (Slack, Teams Workflows, Google Chat,
  Chatwork),
  :mod:`ivr_platform.notify_lineworks` (LINE WORKS API 2.0 bot),
  :mod:`ivr_platform.notify_mail` (SMTP).
* :mod:`ivr_platform.delivery`: one HTTP call to a provider and the errors all adapters
  raise (``Rejected``: never again as it is; ``Unavailable``: may be tried again).
* :mod:`ivr_platform.audio`: a merchant's mp3, m4a/mp4 or wav converted by ffmpeg to 8 kHz
  16-bit mono WAV at -23 LUFS, or refused with a reason;
  :mod:`ivr_platform.guidance`: the converted files per merchant, played as
  ``sound:cbgw-guidance/<merchant>/<name>``.
* :mod:`ivr_platform.recordings`: call recordings kept per merchant until they expire
  (migration set ``ivr_platform``), fetched by signed expiring links.
* :mod:`ivr_platform.media_http` (the callback site's guidance and recordings API) and
  :mod:`ivr_platform.media_config` (its ``[media]`` section).
* :mod:`ivr_platform.tools`: running the external programs (Open JTalk, espeak-ng, sox,
  ffmpeg) with a deadline, or naming the Debian package that is missing.
* :mod:`ivr_platform.cli`: ``python -m ivr_platform hours|say|prompts|sms-count|guidance``.
"""
