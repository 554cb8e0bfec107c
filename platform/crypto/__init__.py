"""Key files, raw Fernet tokens (``keys``) and homomorphic encryption contexts (``he``)."""
