"""Audio decoding, log-mel frontends and their specification."""
