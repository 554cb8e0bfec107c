"""Differential-privacy bookkeeping: persisted per-client accountants, signed reports, ε audit.

Modules: ``accounting`` (cumulative accountant kept on the node), ``reports`` (Ed25519-signed,
hash-chained per-round privacy reports and their MLflow artifacts), ``audit`` (independent
recomputation of every claim with Google's dp-accounting), ``noise`` (the OS-entropy generators
every DP noise and Poisson sample is drawn from).
"""
