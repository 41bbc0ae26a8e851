"""Typed keys of the aiohttp application's state: no singletons, no string keys."""

from __future__ import annotations

from aiohttp import web

from pipeline.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
