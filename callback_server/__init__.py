"""The call-back site: intake, job queue, dialer, IVR and the ARI adapter."""
