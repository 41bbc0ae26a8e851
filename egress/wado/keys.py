"""Typed keys of the aiohttp application's state: no singletons, no string keys."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from pipeline.cache import Cache
from pipeline.outbox import Outbox, OutboxPublisher
from pipeline.regeneration import MetadataBuilder
from pipeline.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
CACHE = web.AppKey("cache", Cache)
BUILDER = web.AppKey("builder", MetadataBuilder)
OUTBOX = web.AppKey("outbox", Outbox)
"""The web server's durable outbox: STOW-RS stores and accepted DELETEs are spooled here."""
PUBLISHER = web.AppKey("publisher", OutboxPublisher)
