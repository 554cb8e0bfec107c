"""What the ClientApp and the ServerApp agree on; both import it, neither imports the other."""
