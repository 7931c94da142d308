"""Helpers that run real components (Asterisk, SIPp) for e2e tests and the demo.

* :mod:`tests.harness.asterisk` - ensure the root, install/start a site, reset, qualify
* :mod:`tests.harness.sipp`     - SIPp roles and the SIP facts in their traces
* :mod:`tests.harness.json_log` - a logger's lines in the servers' JSON format
"""
