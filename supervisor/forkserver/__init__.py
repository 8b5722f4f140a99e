"""The process boundary: the fork server and everything that crosses to it.

  protocol.py  the ONE description of every request, reply and status record, in the order they cross
  server.py    the fork server's process (`python -I -S`): plans each sandbox's confinement, launches its init
  netpool.py   the fork server's pool of network namespaces
  client.py    the supervisor's side: starts the server, sends requests, reads replies and status records
  prefork.py   the supervisor's pool of sandboxes confined ahead of their command

protocol.py, server.py and netpool.py run in the fork server: they import the standard library, the
mechanism modules (supervisor.sandbox) and corral's C extension only (tests/unit/test_forkserver_protocol.py
checks it). This file imports nothing, so that loading the server loads no more.
"""
