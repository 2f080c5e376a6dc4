"""How long a client waits for a server when nobody says otherwise: the one place for it.

The transport applies `DEFAULT_DEADLINE` to every remote call made without a timeout, and the
command line shows it in `--help`; nothing else decides how long a read may wait.
"""

from __future__ import annotations

DEFAULT_DEADLINE = 30.0
"""Seconds a remote call may wait for the server, retries included: a unary call's whole
duration, and for a stream the wait for each message (so that a large blob may take as long
as it takes to arrive, but a server that goes quiet fails it). Long enough to ride out a
restart of the server: retries back off to at most 2 s apart and the channel reconnects at
most 5 s after the server is back, so an outage of up to about 20 s goes unnoticed. Short
enough that a dead server turns into an EIO before a user gives up on the command."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds `castore mount` and `castore import` wait at start-up for a server to accept a
connection, so that a wrong address is an error instead of a mount that hangs."""
