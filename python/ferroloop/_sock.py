"""The low-level socket API: loop.sock_* operations."""


class SockMixin:
    pass
