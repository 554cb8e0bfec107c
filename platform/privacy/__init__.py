"""Differential-privacy bookkeeping: persisted per-client accountants, signed reports, ε audit.

Modules, by concern:

* the mechanism and its accounting: ``ids`` (client id alphabet), ``mechanism`` (segments of
  Poisson-sampled Gaussian steps), ``orders`` (Rényi order grid and bounds), ``accountant`` (a
  client's lifetime accountant and its state invariants), ``accountant_store`` (its state files on
  the node), ``accounting`` (wiring it into Opacus: round plan, σ calibration, ``attach``);
* signed reports: ``signing`` (Ed25519 key files, canonical JSON, signatures), ``report_schema``
  (the report and its invariants), ``report_signing`` (sign, verify, the coordinator's key
  registry), ``report_chain`` (recording and checking a run's chain), ``report_store`` (MLflow
  artifacts);
* the audit: ``audit`` (rules), ``audit_accountant`` (independent recomputation), ``audit_log``
  (the coordinator's signed round log), ``audit_load``, ``audit_result``, ``audit_render``;
* ``noise`` (the OS-entropy generators every DP noise and Poisson sample is drawn from) and
  ``canary`` (an empirical lower bound on ε from a membership-inference canary game).
"""
