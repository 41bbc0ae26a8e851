"""Prometheus metrics of every service: ``/metrics`` on the web server's port, and on a small
listener of their own for the worker and the SCP (``probes``).

A service may run as several processes (SCP, web): each writes its own files in the service's
folder (prometheus_client's multiprocess mode, ``folder``), and whichever process answers a scrape
sums them all (``exposition``). What the database, the broker or the outboxes hold is read when a
scrape asks, not counted as it happens. prometheus_client decides between in-memory and file-backed
values when it is first imported: ``folder.prepare`` must run before that, so nothing imports it at
module level except ``instruments`` and ``exposition``, which a service imports once prepared.
"""
