"""The uplink: readings from the bus to a remote HTTP server, through a durable spool."""
