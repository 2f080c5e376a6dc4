"""Client, server and embedded stores for the tvix/snix castore protocol.

Start at `services` (the interfaces), `connect.open_services` (addresses to services) and
`errors` (what can go wrong).
"""
