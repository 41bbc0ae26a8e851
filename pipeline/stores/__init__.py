"""Stores: the storage root (files), PostgreSQL and Redis."""
