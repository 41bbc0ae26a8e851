"""What stands in front of the web processes: nginx's configuration, written by pacsflow."""

ACCEL_HANDSHAKE = "X-Pacsflow-Accel"
"""Set by the nginx that ``pacsflow nginx-config`` writes, to ``PACSFLOW_HTTP_ACCEL_REDIRECT``: only a
request that carries it is answered with ``X-Accel-Redirect`` and an empty body."""
