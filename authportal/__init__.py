"""authportal: a login portal and forward-auth server for apps with no login of their own."""

__version__ = "0.1.0"
