"""The catalog: SQL tables derived from the journal (messages, attachments, records, runs...)."""
