"""Text before tokens and tokens of text: chat templates (sandboxed), tokenizations, answer tries
(no torch)."""
