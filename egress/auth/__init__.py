"""Who may do what on the web server: bearer tokens from an OpenID Connect issuer (``PACSFLOW_AUTH=jwt``)."""
