"""The C-STORE SCP (pynetdicom): file to disk, then events to the outbox."""
