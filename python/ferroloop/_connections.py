"""Connections and servers: create_connection, create_server, the Unix variants, start_tls."""


class ConnectionsMixin:
    pass
