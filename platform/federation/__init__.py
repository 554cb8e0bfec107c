"""What the ClientApp and the ServerApp agree on, importable by both without importing each other."""
