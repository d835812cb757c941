"""`powmon run`: the supervisor of the pipeline (its children, their lifelines, their restarts)."""
