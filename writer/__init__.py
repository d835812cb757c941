"""The CSV writer: the one process that stores readings from the bus in data files."""
