"""`powmon tap`: watch a running pipeline, as a live table per sensor or as JSON lines."""
